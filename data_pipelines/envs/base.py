"""The interface every environment wrapper shares (toy world, Craftax, Atari).

No jax here: this module is imported by Grain workers and by the collector.

Alignment convention (used everywhere in the project): frame t holds the action
that *led to* frame t. The first frame of an episode holds the null action and
``action_labelled=False``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Protocol

import numpy as np

ACTION_KINDS = ("discrete", "binary", "continuous")


@dataclasses.dataclass(frozen=True)
class ActionComponent:
  """One component of an action (e.g. the keyboard, or the mouse).

  Attributes:
    name: human-readable name ("move", "keys", ...).
    kind: one of "discrete" (one categorical with `size` classes, stored as one
      int32 column), "binary" (`size` independent bits, stored as `size` int32
      columns of 0/1) or "continuous" (`size` float32 columns).
    size: number of classes (discrete), bits (binary) or dimensions (continuous).
    labels: optional names of the classes (discrete) or bits (binary).
  """

  name: str
  kind: str
  size: int
  labels: tuple[str, ...] = ()

  def __post_init__(self):
    if self.kind not in ACTION_KINDS:
      raise ValueError(f"action component {self.name!r}: kind {self.kind!r} is not one of {ACTION_KINDS}")
    if self.size < 1:
      raise ValueError(f"action component {self.name!r}: size must be >= 1, got {self.size}")

  @property
  def columns(self) -> int:
    """Number of columns this component takes in the stored action arrays."""
    return 1 if self.kind == "discrete" else self.size


@dataclasses.dataclass(frozen=True)
class ActionSpec:
  """The action space of a dataset: an ordered tuple of components.

  Discrete and binary components are stored side by side in the int32 array
  `actions_discrete [N, Ad]`; continuous ones in float32 `actions_continuous [N, Ac]`.
  """

  components: tuple[ActionComponent, ...]

  @property
  def discrete_columns(self) -> int:
    return sum(c.columns for c in self.components if c.kind != "continuous")

  @property
  def continuous_columns(self) -> int:
    return sum(c.columns for c in self.components if c.kind == "continuous")

  def null_action(self) -> tuple[np.ndarray, np.ndarray]:
    """The (discrete int32 [Ad], continuous float32 [Ac]) action stored at episode starts."""
    return (np.zeros((self.discrete_columns,), np.int32), np.zeros((self.continuous_columns,), np.float32))

  def to_json(self) -> list[dict[str, Any]]:
    return [dataclasses.asdict(c) | {"labels": list(c.labels)} for c in self.components]

  @classmethod
  def from_json(cls, items: list[dict[str, Any]]) -> ActionSpec:
    return cls(
      tuple(
        ActionComponent(name=i["name"], kind=i["kind"], size=int(i["size"]), labels=tuple(i.get("labels", ())))
        for i in items
      )
    )


def _xp(*arrays):
  """numpy, or jax.numpy when any of `arrays` is a jax array or tracer (jax is imported only then)."""
  for a in arrays:
    if a is not None and not isinstance(a, (np.ndarray, np.generic, list, tuple, int, float, bool)):
      import jax.numpy as jnp

      return jnp
  return np


class Action(NamedTuple):
  """Actions as the models consume them: one frame's, or a batch or window of them.

  The one action type of the project (dynamics model, KV cache, world, heads, phases,
  play and evaluation). A NamedTuple, so a pytree with no extra registration: it passes
  through jax.jit, lax.scan, jax.tree.map, nnx transforms and sharding constraints as
  its three arrays. Leading shape `...` is [B], [B, T], [N], ... (the same for all fields).

  Fields:
    discrete: int32 [..., Ad], the spec's discrete and binary columns in spec order.
    continuous: float32 [..., Ac], the spec's continuous columns.
    labelled: bool [...]; False = no action known (the dynamics model then uses only
      its base action embedding, whatever the columns hold).

  Rule for absent parts: every field is always an array, never None. A part the spec has
  no columns for is a zero-width array ([..., 0]), so the pytree structure never depends
  on the spec. The constructors build jax arrays when any input is a jax array (or a
  tracer) and numpy arrays otherwise (`unlabelled`: always numpy; jit turns them into
  inputs or constants).

  Storage keeps its own field names (`actions_discrete`, `actions_continuous`,
  `action_labelled`); `from_window` converts a batch of them where it becomes model input.
  """

  discrete: Any
  continuous: Any
  labelled: Any

  @classmethod
  def unlabelled(cls, spec: ActionSpec, lead: tuple[int, ...]) -> Action:
    """The "no action" of leading shape `lead`: zero columns of the spec's widths, labelled False."""
    lead = tuple(lead)
    return cls(
      np.zeros(lead + (spec.discrete_columns,), np.int32),
      np.zeros(lead + (spec.continuous_columns,), np.float32),
      np.zeros(lead, bool),
    )

  @classmethod
  def labelled_from(cls, discrete=None, continuous=None) -> Action:
    """Labelled actions from their columns: int [..., Ad] and/or float [..., Ac] (at least one).

    A part not given is zero-width (a spec without such columns); e.g. the rows of a
    discrete-only env or the samples of a policy head.
    """
    if discrete is None and continuous is None:
      raise ValueError("Action.labelled_from needs discrete or continuous columns")
    xp = _xp(discrete, continuous)
    if discrete is not None:
      discrete = xp.asarray(discrete, np.int32)
    if continuous is not None:
      continuous = xp.asarray(continuous, np.float32)
    lead = tuple((discrete if discrete is not None else continuous).shape[:-1])
    if discrete is None:
      discrete = xp.zeros(lead + (0,), np.int32)
    if continuous is None:
      continuous = xp.zeros(lead + (0,), np.float32)
    return cls(discrete, continuous, xp.ones(lead, bool))

  @classmethod
  def from_window(cls, batch) -> Action:
    """The actions of a batch of stored windows ([B, T, ...]: `actions_discrete`,
    `action_labelled` and `actions_continuous` where the batch holds it, else zero-width)."""
    labelled, disc, cont = batch["action_labelled"], batch.get("actions_discrete"), batch.get("actions_continuous")
    xp = _xp(labelled, disc, cont)
    labelled = xp.asarray(labelled, bool)
    lead = tuple(labelled.shape)
    return cls(
      xp.zeros(lead + (0,), np.int32) if disc is None else xp.asarray(disc, np.int32),
      xp.zeros(lead + (0,), np.float32) if cont is None else xp.asarray(cont, np.float32),
      labelled,
    )


class Env(Protocol):
  """What every environment wrapper provides (numpy in, numpy out).

  Attributes:
    name: short env name as used by `collect --env=NAME`.
    frame_shape: (H, W, C) of the uint8 frames.
    action_spec: the ActionSpec of the env.
    task_names: names of the tasks; task ids index this tuple.
    fps: nominal frames per second (metadata only).
  """

  name: str
  frame_shape: tuple[int, int, int]
  action_spec: ActionSpec
  task_names: tuple[str, ...]
  fps: int

  def reset(self, seed: int, task: int | None = None) -> tuple[np.ndarray, int]:
    """Starts an episode; returns (first frame uint8 [H,W,C], task id)."""
    ...

  def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, dict[str, Any]]:
    """Applies a discrete action int32 [Ad]; returns (frame, reward, done, info)."""
    ...
