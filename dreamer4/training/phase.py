"""The Phase contract: every member of a phase that the trainer (dreamer4/training/trainer.py) reads.

A phase (dreamer4/phases/) is built in two steps:

  1. `XPhase(config, shapes, ...)`: checks its config (`validate`, before anything is
     written) and builds its model from shapes (`DataShapes`) and the configs of the runs
     it continues; no store, checkpoint or device is touched. `--dry_run` stops here.
  2. `phase.load_frozen(store, mesh)`: loads the constant inputs of its step (frozen
     weights of earlier runs) and checks the store holds what the step reads (latents).

Each phase module's `make_phase(config, store, mesh)` does both for the trainer.

The members, with the defaults of `Phase`:

  name           str
  config         the phase's config
  data_fields    batch fields the step reads: store arrays plus fields the window loader
                 derives (`LOADER_FIELDS`, e.g. first_T). The one declaration of a phase's
                 data: `read_fields` (the store arrays the loader reads) follows from it.
                 `valid_T` and the fields its `Streams` add (`Streams.flags`) reach the
                 step too, when a batch has them.
  window_pad     "end": the window padding rule (data_pipelines/windows.py)
  model_def      the trainable model (training/state.py ModelDef)
  init_aux()     non-trainable state (e.g. RMS normalisers)
  frozen()       {}: constant inputs of the step (numpy pytree or placed arrays)
  warm_start(params, shardings)   params as is: fresh params -> the step-0 params
  make_streams(data)              uniform windows (`Streams.uniform`): the training streams
  loss_fn(params, aux, batch, rng, frozen) -> loss, (aux, metrics)
  eval_fn(params, batch, frozen) -> scalar means for one batch; a "_weights" entry (name ->
                 weight, e.g. the valid frames a mean is over) pools the batches' frames
  eval_sweep_batches  0: every evaluation batch calls eval_fn(params, batch, frozen); N > 0:
                 only the first N do, the others eval_fn(..., sweep=False) (a cheaper subset)
  summary_fn(params, batch, rng, frozen) -> {}: images [N,H,W,C] or videos [R,T,H,W,C]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from data_pipelines.envs.base import ActionSpec
from data_pipelines.windows import LOADER_FIELDS
from dreamer4 import runs
from dreamer4.errors import ConfigError
from dreamer4.training import state as st


@dataclasses.dataclass(frozen=True)
class DataShapes:
  """What a phase's model needs to know of its dataset: read from a store, or given (dry run)."""

  path: str  # the store, or where the shapes came from (for messages)
  frame_shape: tuple[int, ...] | None = None
  action_spec: ActionSpec | None = None
  latent_shape: tuple[int, int] | None = None  # (num_latents, latent_dim) of the latents array
  num_tasks: int = 1
  env: str = ""

  @classmethod
  def of_store(cls, store, latents: bool = False) -> DataShapes:
    """The shapes of `store` (metadata only); `latents=True` also reads its latents' shape
    (ConfigError when the encode job has not run)."""
    return cls(
      path=str(store.path),
      frame_shape=tuple(store.frame_shape),
      action_spec=store.action_spec,
      latent_shape=runs.latent_shape(store) if latents else None,
      num_tasks=max(1, len(store.task_names)),
      env=str(store.metadata.get("env", "")),
    )

  def latents(self) -> tuple[int, int]:
    if self.latent_shape is None:
      raise ConfigError(f"{self.path}: the latent shape is unknown; run the encode job first")
    return int(self.latent_shape[0]), int(self.latent_shape[1])


@dataclasses.dataclass(frozen=True)
class TrainData:
  """What a phase's training streams draw from (the trainer's view of the dataset)."""

  store: Any  # the EpisodeStore
  train_ids: Sequence[int]  # training episodes
  eval_ids: Sequence[int]  # held-out episodes
  local_batch: int  # rows per process
  # make_iter(window, batch=local_batch, ids=train_ids, last_anchor=None, demos=None): a
  # checkpointable iterator of local batches (last_anchor: data_pipelines.windows.window_table;
  # demos: data_pipelines.windows.Demos)
  make_iter: Callable[..., Any]


class Streams:
  """A phase's training data: named iterators of local batches, saved with every checkpoint.

  `iters` maps a stream name to its iterator (restored on resume); `windows` maps the
  streams the coverage line reports to their window. `next(kind)` draws one local batch
  for the trainer's batch kind ("data", or "data_long" on long-window steps).
  """

  flags: tuple[str, ...] = ()  # per-row fields that `next` and `label_eval` add (sent to the device)

  def __init__(self, iters: dict[str, Any], windows: dict[str, int]):
    self.iters = iters
    self.windows = windows

  @classmethod
  def uniform(cls, config, data: TrainData) -> Streams:
    """Windows drawn uniformly from the training episodes: "data" (config.data.window) and,
    with config.data.long_window, "data_long" ([P §3.4]: alternating batch lengths)."""
    iters = {"data": data.make_iter(config.data.window)}
    windows = {"data": config.data.window}
    long_window = int(config.data.get("long_window", 0))  # a dynamics-phase key; other phases lack it
    if long_window:
      iters["data_long"] = data.make_iter(long_window)
      windows["data_long"] = long_window
    return cls(iters, windows)

  def next(self, kind: str) -> dict:
    return next(self.iters[kind])

  def label_eval(self, batches: list[dict]) -> None:
    """Adds this data's per-row fields to the held-out batches, in place (default: none)."""

  def coverage_tables(self, kind: str) -> tuple:
    """Window tables that stream `kind` draws from besides its own (data_pipelines.windows.window_table)."""
    return ()


class Phase:
  """A phase of training (see the module docstring); subclasses set the members without defaults."""

  name: str
  config: Any
  data_fields: tuple[str, ...]
  window_pad: str = "end"
  model_def: st.ModelDef

  @staticmethod
  def validate(config) -> None:
    """Raises ConfigError for settings of this phase that cannot work (called by the constructor)."""

  @property
  def read_fields(self) -> tuple[str, ...]:
    """The store arrays the loader reads: `data_fields` less the fields the loader derives."""
    return tuple(f for f in self.data_fields if f not in LOADER_FIELDS)

  def load_frozen(self, store, mesh) -> Phase:
    """Loads the step's constant inputs onto `mesh` and checks `store` holds what the step reads; returns self."""
    del store, mesh
    return self

  def init_aux(self) -> Any:
    raise NotImplementedError

  def frozen(self) -> Any:
    return {}

  def warm_start(self, params, shardings):
    del shardings
    return params

  def make_streams(self, data: TrainData) -> Streams:
    return Streams.uniform(self.config, data)

  def loss_fn(self, params, aux, batch, rng, frozen):
    raise NotImplementedError

  eval_sweep_batches: int = 0

  def eval_fn(self, params, batch, frozen) -> dict:
    raise NotImplementedError

  def summary_fn(self, params, batch, rng, frozen) -> dict:
    return {}
