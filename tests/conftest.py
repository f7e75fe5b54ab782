"""Test-session setup: 8 fake CPU devices and parsed absl flags (grain reads flags)."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)
# Several tests compile the same train step (resume, pipeline); a per-session persistent
# compilation cache turns the repeats into cache hits.
import tempfile  # noqa: E402

jax.config.update("jax_compilation_cache_dir", tempfile.mkdtemp(prefix="dreamer4-jax-cache-"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)

from absl import flags  # noqa: E402

if not flags.FLAGS.is_parsed():
  flags.FLAGS.mark_as_parsed()

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory):
  """A small real toy-world EpisodeStore (16x16 frames) shared by the session."""
  from data_pipelines.collect import collect
  path = str(tmp_path_factory.mktemp("data") / "toy16")
  collect("toy", path, episodes=24, seed=0, skills=(0.9, 0.3), size=16)
  return path
