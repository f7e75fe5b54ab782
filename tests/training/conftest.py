"""The tiny tokenizer config on the session's toy store."""

import pytest


@pytest.fixture
def tiny_config(tiny_store):
  from configs import tokenizer

  config = tokenizer.get_config("tiny")
  config.data.path = tiny_store
  return config
