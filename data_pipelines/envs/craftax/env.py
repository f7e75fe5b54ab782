"""Craftax-Classic's jitted programs and `CraftaxClassic`, the numpy wrapper implementing the `Env` protocol.

`programs(size, max_steps, chunk)` are the batched programs: new worlds for a batch of
keys, merging fresh worlds into finished slots, and a `lax.scan` over `chunk` steps of
`vmap`-ed envs in which the expert (expert.py) acts unless an action is forced. The
collector (collect.py) runs them with the expert acting; the wrapper runs them with one
env, one step per call and its own action forced, so a process that both collects
(num_envs=1, chunk=1) and steps the wrapper compiles craftax only once.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from data_pipelines.envs.base import ActionComponent, ActionSpec
from data_pipelines.envs.craftax import ACHIEVEMENT_NAMES, ACTION_NAMES, STAGES, expert

# XLA:CPU options for programs whose compile time dominates their run time.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def make_pixels_env():
  """craftax's Craftax-Classic pixel env (no auto-reset), safe to build from several processes at once.

  craftax renders from a texture cache file that the first process to need it builds and writes in
  place (about 20 s), so a process starting meanwhile reads a truncated file (EOFError). Here the
  cache is read or built under an exclusive lock on a file beside it, and a damaged cache is rebuilt.
  """
  import fcntl  # pylint: disable=g-import-not-at-top
  import pickle  # pylint: disable=g-import-not-at-top

  from craftax.craftax_classic import constants as cc  # pylint: disable=g-import-not-at-top
  from craftax.craftax_env import make_craftax_env_from_name  # pylint: disable=g-import-not-at-top

  cache = cc.TEXTURE_CACHE_FILE
  try:
    lock = open(cache + ".lock", "a")  # pylint: disable=consider-using-with
  except OSError:  # read-only install: its cache was built when it was installed
    lock = None
  try:
    if lock is not None:
      fcntl.flock(lock, fcntl.LOCK_EX)
    existed = os.path.exists(cache)
    try:
      cc.load_all_textures()
    except (EOFError, OSError, ValueError, pickle.UnpicklingError):  # a damaged file: bz2, EOF, unpickling
      if not (existed and os.path.exists(cache)):  # nothing was there to be damaged: the build failed
        raise
      os.remove(cache)
      cc.load_all_textures()
  finally:
    if lock is not None:
      lock.close()  # releases the lock
  return make_craftax_env_from_name("Craftax-Classic-Pixels-v1", auto_reset=False)


@functools.cache
def env_fns(size: int, max_steps: int) -> tuple[Callable[..., Any], Callable[..., Any]]:
  """Pure single-env functions (reset, step), built once per (size, max_steps)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  env = make_pixels_env()
  params = env.default_params.replace(max_timesteps=max_steps)

  def to_uint8(obs_HWC):
    if obs_HWC.shape[:2] != (size, size):
      obs_HWC = jax.image.resize(obs_HWC, (size, size, obs_HWC.shape[-1]), method="linear")
    return jnp.clip(jnp.round(obs_HWC * 255.0), 0, 255).astype(jnp.uint8)

  def reset(key):
    """key -> (frame uint8 [H,W,3], env state)."""
    obs, state = env.reset_env(key, params)
    # World generation leaves player_direction weakly typed, step does not: without this the
    # rollout program compiles twice (first chunk, then every later one).
    state = state.replace(player_direction=jnp.asarray(state.player_direction, jnp.int32))
    return to_uint8(obs), state

  def step(state, action, key):
    """-> (frame, state, unlocked bool [22], done, died)."""
    obs, new_state, _, done, _ = env.step_env(key, state, action, params)
    unlocked = jnp.logical_and(new_state.achievements, jnp.logical_not(state.achievements))
    died = jnp.logical_and(done, new_state.timestep < max_steps)
    return to_uint8(obs), new_state, unlocked, done, died

  return reset, step


@functools.cache
def programs(size: int, max_steps: int, chunk: int):
  """Jitted batched functions: new_worlds(keys), merge(...) and rollout(carry, forced) over `chunk` steps.

  Cached, so the wrapper and the collector (collect.py) share compiled programs (same shapes: no recompilation).
  Step-at-a-time programs (chunk 1: the wrapper, tests) are latency bound, not throughput bound, so
  they are compiled with XLA's cheap settings (about 25% less compile time, same results).
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  reset, step = env_fns(size, max_steps)
  policy = expert.make_expert()
  jit = jax.jit if chunk > 1 else functools.partial(jax.jit, compiler_options=FAST_COMPILE)

  @jit
  def new_worlds(reset_keys):
    return jax.vmap(reset)(reset_keys)

  @jit
  def merge(carry, fresh_states, fresh_idx, dead, step_keys, policy_keys, goals, skills):
    """Gives dead slots the fresh world fresh_idx[b] and new per-episode keys and knobs."""
    take = lambda x: x[fresh_idx]
    sel = lambda new, old: jnp.where(dead.reshape((-1,) + (1,) * (old.ndim - 1)), new, old)
    states = jax.tree.map(lambda n, o: sel(take(n), o), fresh_states, carry["state"])
    pstate0 = expert.policy_state(dead.shape[0])
    out = dict(carry)
    out["state"] = states
    out["pstate"] = jax.tree.map(sel, pstate0, carry["pstate"])
    out["t"] = jnp.where(dead, 0, carry["t"])
    out["done"] = jnp.where(dead, False, carry["done"])
    for name, x in (("step_key", step_keys), ("policy_key", policy_keys), ("goal", goals), ("skill", skills)):
      out[name] = sel(x, carry[name])
    return out

  def one_env_step(state, pstate, t, done, step_key, policy_key, goal, skill, forced_action):
    action, pstate = policy(state, pstate, goal, skill, jax.random.fold_in(policy_key, t))
    action = jnp.where(forced_action >= 0, forced_action, action)
    frame, new_state, unlocked, new_done, died = step(state, action, jax.random.fold_in(step_key, t))
    # Past the end of an episode the slot idles; its outputs are ignored on the host.
    return frame, new_state, pstate, action, unlocked, new_done | done, died

  @jit
  def rollout(carry, forced_actions):
    """forced_actions int32 [chunk, B]: the action to take, or -1 for the expert's."""

    def body(c, forced):
      frame, state, pstate, action, unlocked, done, died = jax.vmap(one_env_step)(
        c["state"], c["pstate"], c["t"], c["done"], c["step_key"], c["policy_key"], c["goal"], c["skill"], forced
      )
      was_done = c["done"]
      c = dict(c, state=state, pstate=pstate, t=c["t"] + 1, done=done)
      return c, {
        "frame": frame,
        "action": action,
        "unlocked": unlocked,
        "done": done,
        "died": died,
        "was_done": was_done,
      }

    return jax.lax.scan(body, carry, forced_actions)

  return new_worlds, merge, rollout


def jax_tree_first(tree):
  """Row 0 of every leaf of a batched pytree."""
  import jax  # pylint: disable=g-import-not-at-top

  return jax.tree.map(lambda x: x[0], tree)


def episode_keys(seed: int):
  """(reset key, step key, policy key) of an episode; step t uses fold_in(step key, t)."""
  import jax  # pylint: disable=g-import-not-at-top

  return tuple(jax.random.split(jax.random.PRNGKey(int(seed) % (2**31)), 3))


class CraftaxClassic:
  """Craftax-Classic (pixels) implementing the `Env` protocol.

  Args:
    size: frame height and width in pixels (the native render is 63x63).
    max_steps: steps after which an episode is truncated (frames = steps + 1).
  """

  name = "craftax"
  fps = 10
  task_names = ACHIEVEMENT_NAMES
  action_spec = ActionSpec((ActionComponent("action", "discrete", len(ACTION_NAMES), ACTION_NAMES),))

  def __init__(self, size: int = 64, max_steps: int = 10000):
    if size < 8:
      raise ValueError(f"CraftaxClassic: size must be >= 8, got {size}")
    if max_steps < 1:
      raise ValueError(f"CraftaxClassic: max_steps must be >= 1, got {max_steps}")
    self.size = size
    self.max_steps = max_steps
    self.frame_shape = (size, size, 3)
    self.state = None
    self.task = 0
    self.steps = 0
    self._carry = None

  def _fns(self):
    """The batched programs at one env, one step per call (see the module docstring)."""
    return programs(self.size, self.max_steps, 1)

  def reset(self, seed: int, task: int | None = None) -> tuple[np.ndarray, int]:
    """Starts an episode from `seed`; returns (first frame uint8 [H,W,3], task id).

    The task id only labels the episode; default 0.
    """
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

    self.task = 0 if task is None else int(task)
    if not 0 <= self.task < len(ACHIEVEMENT_NAMES):
      raise ValueError(f"CraftaxClassic: task must be in [0, {len(ACHIEVEMENT_NAMES)}), got {task}")
    reset_key, step_key, policy_key = episode_keys(seed)
    new_worlds, _, _ = self._fns()
    frames, states = new_worlds(reset_key[None])
    self._carry = {
      "state": states,
      "pstate": expert.policy_state(1),
      "t": jnp.zeros((1,), jnp.int32),
      "done": jnp.zeros((1,), bool),
      "step_key": step_key[None],
      "policy_key": policy_key[None],
      "goal": jnp.full((1,), len(STAGES) - 1, jnp.int32),
      "skill": jnp.ones((1,), jnp.float32),
    }
    self.state = jax_tree_first(states)
    self.steps = 0
    return np.asarray(frames[0]), self.task

  def step(self, action: Any) -> tuple[np.ndarray, float, bool, dict[str, Any]]:
    """Applies an action (int or int32 [1]); returns (frame, reward, done, info).

    info: "terminal" (the player died), "unlocked" (bool [22], achievements
    unlocked by this step), "achievements" (bool [22], all so far), "success"
    (the task's achievement is unlocked) and "task".
    """
    if self.state is None:
      raise RuntimeError("CraftaxClassic.step called before reset")
    a = int(np.asarray(action).reshape(-1)[0])
    if not 0 <= a < len(ACTION_NAMES):
      raise ValueError(f"CraftaxClassic: action must be in [0, {len(ACTION_NAMES)}), got {a}")
    _, _, rollout = self._fns()
    self._carry, out = rollout(self._carry, np.full((1, 1), a, np.int32))
    self.state = jax_tree_first(self._carry["state"])
    self.steps += 1
    unlocked = np.asarray(out["unlocked"][0, 0])
    achievements = np.asarray(self.state.achievements)
    info = {
      "terminal": bool(out["died"][0, 0]),
      "unlocked": unlocked,
      "achievements": achievements,
      "success": bool(achievements[self.task]),
      "task": self.task,
    }
    return np.asarray(out["frame"][0, 0]), float(unlocked.sum()), bool(out["done"][0, 0]), info
