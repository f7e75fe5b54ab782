"""Game state read back from frames: which parser an env has, and the rollout metrics the
dynamics evaluation builds on it (jit-friendly).

An env names its parser module in its registry entry (data_pipelines/envs `EnvSpec.state_parser`;
toy: dreamer4/evaluation/toy_state.py, craftax: dreamer4/evaluation/craftax_state.py). Every
parser module gives the same small interface:

  parse(frames [..., S, S, 3]) -> State: uint8 or float frames in [0, 1]; State is a NamedTuple
    of arrays with the frames' leading dims.
  frame_counts(truth: State, gen: State) -> {name: float32 [B, H]}: per-frame counts comparing
    a generated rollout's parse with the true one.
  rollout_metrics(counts, valid_BH, tag) -> {name: scalar}: named means over the frames whose
    truth is valid, per horizon step (`<name>_<tag>_hXX`) and over the horizon (`<name>_<tag>`).

and may give:

  extra_metrics(last: State [B], truth: State [B, H], valid_BH) -> {name: scalar} (`EXTRA`): the
    env's own references and diagnostics (toy: the random walk's agent-cell accuracy and how much
    of the truth parses; craftax: the truth's daylight, below which the parse is not exact).
  readable(frame_shape) -> bool (`READABLE`): whether frames of that shape can be parsed (toy:
    a multiple of 8 px; craftax: 32 px or more); a store of other frames gets no state metrics.
  frame_scores(truth: State, gen: State) -> {name: float32 [...]} (`SCORES`): per-frame scores
    in [0, 1] of a parse against the true one, poolable over any set of frames; the world-model
    probe (dreamer4/evaluation/probe.py) needs it (toy: agent_acc, state_match; craftax:
    block_acc, block_match, overlay_acc, inventory_match).
"""

from __future__ import annotations

import importlib
import logging
from types import ModuleType
from typing import Any

from data_pipelines.envs import ENVS

REQUIRED = ("parse", "frame_counts", "rollout_metrics")
EXTRA = "extra_metrics"
READABLE = "readable"
SCORES = "frame_scores"


def parser_module(name: str) -> ModuleType:
  """Imports the parser module `name` (a dotted module name) and checks its interface.

  Raises:
    TypeError: if the module lacks a function of the interface.
  """
  module = importlib.import_module(name)
  missing = [f for f in REQUIRED if not callable(getattr(module, f, None))]
  if missing:
    raise TypeError(f"state parser {name} lacks {', '.join(missing)} (see dreamer4/evaluation/frame_state.py)")
  return module


def parser_for_env(env: str, frame_shape=None) -> ModuleType | None:
  """The frame parser registered for `env` (EnvSpec.state_parser); None for an env without one,
  one not registered (e.g. a store written before stores recorded their env), or frames of a
  `frame_shape` (S, S, 3) the parser cannot read (logged)."""
  spec = ENVS.get(env)
  if spec is None or not spec.state_parser:
    return None
  module = parser_module(spec.state_parser)
  readable = getattr(module, READABLE, None)
  if frame_shape is not None and readable is not None and not readable(tuple(frame_shape)):
    logging.warning(
      "%s frames of shape %s are too small for %s: no game-state metrics in the evaluation",
      env,
      tuple(frame_shape),
      spec.state_parser,
    )
    return None
  return module


def rollout_state_metrics(parser: ModuleType, truth: Any, gen_frames, valid_BH, tag: str) -> dict[str, Any]:
  """The parser's rollout_metrics of generated frames [B, H, S, S, 3] against the true parse [B, H]."""
  return parser.rollout_metrics(parser.frame_counts(truth, parser.parse(gen_frames)), valid_BH, tag)


def reference_state_metrics(parser: ModuleType, truth: Any, held_frames, valid_BH, last_frames=None) -> dict[str, Any]:
  """The no-model references: the parser's rollout_metrics (tag "hold") of the held frames
  [B, H, S, S, 3] (the last context frame's latents decoded at every horizon step: the frames the
  hold PSNR scores), and the parser's extra_metrics, if it has any, from the last context frame
  `last_frames` [B, S, S, 3] (the first held frame when None)."""
  out = dict(rollout_state_metrics(parser, truth, held_frames, valid_BH, "hold"))
  extra = getattr(parser, EXTRA, None)
  if extra is not None:
    out.update(extra(parser.parse(held_frames[:, 0] if last_frames is None else last_frames), truth, valid_BH))
  return out
