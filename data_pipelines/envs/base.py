"""The interface every environment wrapper shares (toy world, Craftax, Atari).

No jax here: this module is imported by Grain workers and by the collector.

Alignment convention (used everywhere in the project): frame t holds the action
that *led to* frame t. The first frame of an episode holds the null action and
``action_labelled=False``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

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
