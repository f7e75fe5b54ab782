"""A tiny real toy-world EpisodeStore shared by the training tests."""

import pytest

from data_pipelines.collect import collect


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("data") / "toy16")
  collect("toy", path, episodes=24, seed=0, skills=(0.9, 0.3), size=16)
  return path


@pytest.fixture
def tiny_config(tiny_store):
  from configs import tokenizer
  config = tokenizer.get_config("tiny")
  config.data.path = tiny_store
  return config
