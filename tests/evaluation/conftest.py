"""Fixtures shared by the evaluation tests."""

import pytest

# The Craftax store the parser and event tests read: the expert (skills 1.0 and 0.0), seed 7,
# 6 episodes of at most 30 steps at 64 px, one env stepped one step per call.
CRAFTAX_STORE = dict(episodes=6, seed=7, skills=(1.0, 0.0), size=64, max_steps=30, num_envs=1, chunk=1)


@pytest.fixture(scope="session")
def craftax_store_path(tmp_path_factory):
  """Path of an EpisodeStore the real Craftax collector wrote with CRAFTAX_STORE, collected once
  per test process."""
  pytest.importorskip("craftax")
  from data_pipelines.collect import collect  # pylint: disable=import-outside-toplevel

  path = str(tmp_path_factory.mktemp("craftax_store") / "store")
  collect("craftax", path, **CRAFTAX_STORE)
  return path
