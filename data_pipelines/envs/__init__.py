"""Environment wrappers behind one interface (see `base.Env`), and `make_env` to build them by name."""

from __future__ import annotations

from typing import Any, Callable

from data_pipelines.envs.base import ActionComponent, ActionSpec, Env
from data_pipelines.envs.toy import ToyWorld

# Name -> constructor. Wrappers of heavy third-party envs (craftax, atari) should
# register a function that imports their dependency lazily, so `import
# data_pipelines.envs` stays cheap and jax-free.
def _craftax(**kwargs: Any) -> Env:
  from data_pipelines.envs.craftax import CraftaxClassic  # pylint: disable=g-import-not-at-top
  return CraftaxClassic(**kwargs)


ENVS: dict[str, Callable[..., Env]] = {"toy": ToyWorld, "craftax": _craftax}


def make_env(name: str, **kwargs: Any) -> Env:
  """Builds the environment registered under `name` with constructor kwargs.

  Raises:
    ValueError: if no env of that name is registered.
  """
  if name not in ENVS:
    raise ValueError(f"unknown env {name!r}: choose one of {', '.join(sorted(ENVS))}")
  return ENVS[name](**kwargs)


__all__ = ["ActionComponent", "ActionSpec", "ENVS", "Env", "ToyWorld", "make_env"]
