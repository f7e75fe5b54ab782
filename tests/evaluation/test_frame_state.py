"""frame_state: every env's frame parser (EnvSpec.state_parser) gives the interface the dynamics
evaluation calls, and envs without one get none."""

import pytest

from data_pipelines.envs import ENVS
from dreamer4.evaluation import craftax_state, frame_state, toy_state


def test_registered_parsers_have_the_interface():
  assert frame_state.parser_for_env("toy") is toy_state
  assert frame_state.parser_for_env("craftax") is craftax_state
  for name, spec in ENVS.items():
    if spec.state_parser:
      module = frame_state.parser_module(spec.state_parser)
      assert all(callable(getattr(module, f)) for f in frame_state.REQUIRED + (frame_state.EXTRA,)), name


def test_no_parser_for_unknown_or_unrecorded_envs():
  assert frame_state.parser_for_env("") is None  # a store that does not record its env
  assert frame_state.parser_for_env("no_such_env") is None


def test_a_module_without_the_interface_is_refused():
  with pytest.raises(TypeError, match="lacks parse, frame_counts, rollout_metrics"):
    frame_state.parser_module("dreamer4.evaluation.video_metrics")


def test_frames_a_parser_cannot_read_get_no_parser():
  assert frame_state.parser_for_env("toy", (16, 16, 3)) is toy_state
  assert frame_state.parser_for_env("toy", (12, 12, 3)) is None  # not a multiple of the 8x8 grid
  assert frame_state.parser_for_env("toy", (16, 16, 1)) is None
  pytest.importorskip("craftax")
  assert frame_state.parser_for_env("craftax", (64, 64, 3)) is craftax_state
  assert frame_state.parser_for_env("craftax", (32, 32, 3)) is craftax_state  # 2 interior pixels per cell
  assert frame_state.parser_for_env("craftax", (24, 24, 3)) is None  # 1: a cell's pixels mix its neighbours
