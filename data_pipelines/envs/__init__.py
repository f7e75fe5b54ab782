"""Environment wrappers behind one interface (see `base.Env`), and the registry `ENVS` of their settings.

A new environment is one module (its wrapper, and a scripted behaviour policy or a batched
collector) plus one `EnvSpec` line in `ENVS`. Wrappers of heavy third-party envs (craftax,
atari) register functions that import them lazily, so `import data_pipelines.envs` stays
cheap and jax-free.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

from data_pipelines.envs import craftax, toy
from data_pipelines.envs.base import ActionComponent, ActionSpec, Env
from data_pipelines.envs.toy import ToyWorld


@dataclasses.dataclass(frozen=True)
class EnvSpec:
  """What the collector, the pipeline and the evaluation need to know about one env.

  Attributes:
    make: the constructor; takes the kwargs of `env_kwargs`.
    max_steps: episode cap of `python -m data_pipelines.collect` when --max_steps is not given.
    layouts: values of the constructor's `layout` argument, the default first (() : no layouts).
    behaviour: per-episode collection: (skill, seed) -> policy, with policy(env) -> int32 [Ad],
      the next action for the env's current state.
    collect_batched: batched collection (the env steps many episodes at once, e.g. in JAX):
      (env, episode_seeds, skills, *, num_envs, chunk, max_episodes, max_frames, sink, log[, goals])
      -> summary (see `data_pipelines.envs.craftax.collect.collect_batched`). Exactly one of
      `behaviour` and `collect_batched` is set.
    frame_arrays: extra per-frame uint8 arrays the collected episodes carry (in "extra"):
      array name -> names of its columns (e.g. achievement unlocks).
    state_parser: the module that reads the env's frames back into game state, for the
      dynamics evaluation's rollout metrics (see dreamer4/evaluation/frame_state.py for its
      interface); a dotted name, so that data_pipelines never imports dreamer4. "": none.
    action_groups: a group name per action id of the env's (first) discrete action component,
      by which the world-model probe (dreamer4/evaluation/probe.py) splits its one-step errors
      (e.g. moves, which shift the view, against the rest). (): every action is its own group,
      named by its label (`action_groups`).
    goals: batched envs only: the goals a collection may be restricted to (`collect_batched`'s
      `goals`, e.g. Craftax's tech-tree stages); (): the env's goals cannot be chosen.
  """

  make: Callable[..., Env]
  max_steps: int
  layouts: tuple[str, ...] = ()
  behaviour: Callable[[float, int], Callable[[Env], np.ndarray]] | None = None
  collect_batched: Callable[..., dict[str, Any]] | None = None
  frame_arrays: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
  state_parser: str = ""
  action_groups: tuple[str, ...] = ()
  goals: tuple[str, ...] = ()

  def __post_init__(self):
    if (self.behaviour is None) == (self.collect_batched is None):
      raise ValueError("EnvSpec: give exactly one of behaviour (per-episode) and collect_batched")

  @property
  def batched(self) -> bool:
    return self.collect_batched is not None

  def env_kwargs(self, size: int, max_steps: int, layout: str | None = None) -> dict[str, Any]:
    """Constructor kwargs: frames of `size` pixels, episodes cut at `max_steps` and, for envs with
    layouts, `layout` (None or "": the default)."""
    kwargs: dict[str, Any] = {"size": int(size), "max_steps": int(max_steps)}
    if self.layouts:
      kwargs["layout"] = layout or self.layouts[0]
    return kwargs


def _craftax(**kwargs: Any) -> Env:
  from data_pipelines.envs.craftax.env import CraftaxClassic  # pylint: disable=g-import-not-at-top

  return CraftaxClassic(**kwargs)


def _craftax_collect(*args: Any, **kwargs: Any) -> dict[str, Any]:
  from data_pipelines.envs.craftax.collect import collect_batched  # pylint: disable=g-import-not-at-top

  return collect_batched(*args, **kwargs)


ENVS: dict[str, EnvSpec] = {
  "toy": EnvSpec(
    ToyWorld,
    max_steps=64,
    layouts=toy.LAYOUTS,
    behaviour=toy.ScriptedPolicy,
    state_parser="dreamer4.evaluation.toy_state",
    action_groups=toy.ACTION_GROUPS,
  ),
  "craftax": EnvSpec(
    _craftax,
    max_steps=2000,
    collect_batched=_craftax_collect,
    frame_arrays={"achievement_unlocks": craftax.ACHIEVEMENT_NAMES},
    state_parser="dreamer4.evaluation.craftax_state",
    action_groups=craftax.ACTION_GROUPS,
    goals=tuple(stage[0] for stage in craftax.STAGES),
  ),
}


def action_groups(name: str, action_spec: ActionSpec) -> tuple[str, ...]:
  """The group of every action id of the spec's first discrete component: the registry's
  `action_groups` of env `name`, or (an env without them, or not registered) each action's
  own label (its id when unlabelled). () when the spec has no discrete component.

  Raises:
    ValueError: if the registry names a group for other than every action of the component.
  """
  comp = next((c for c in action_spec.components if c.kind == "discrete"), None)
  if comp is None:
    return ()
  spec = ENVS.get(name)
  if spec is not None and spec.action_groups:
    if len(spec.action_groups) != comp.size:
      raise ValueError(
        f"env {name!r}: EnvSpec.action_groups names {len(spec.action_groups)} actions, "
        f"its action component {comp.name!r} has {comp.size}"
      )
    return tuple(spec.action_groups)
  return tuple(comp.labels[i] if i < len(comp.labels) else str(i) for i in range(comp.size))


def make_env(name: str, **kwargs: Any) -> Env:
  """Builds the environment registered under `name` with constructor kwargs.

  Raises:
    ValueError: if no env of that name is registered.
  """
  if name not in ENVS:
    raise ValueError(f"unknown env {name!r}: choose one of {', '.join(sorted(ENVS))}")
  return ENVS[name].make(**kwargs)


__all__ = ["ActionComponent", "ActionSpec", "ENVS", "Env", "EnvSpec", "ToyWorld", "action_groups", "make_env"]
