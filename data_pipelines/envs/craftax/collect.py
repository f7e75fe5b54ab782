"""Batched Craftax collection: the scripted expert in `num_envs` envs at once, in JAX.

The batched programs of env.py run `vmap` over `num_envs` envs and `lax.scan` over
chunks of `chunk` steps, with the env's auto-reset off. Worlds for new episodes are
generated in batches ahead of time, and a slot whose episode ended picks up a fresh
world at the next chunk boundary, so no world is regenerated per step.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from data_pipelines.envs.craftax import ACHIEVEMENT_NAMES, STAGE_ACHIEVEMENTS, STAGES, expert
from data_pipelines.envs.craftax.env import CraftaxClassic, episode_keys, programs


def default_goal_probs() -> np.ndarray:
  """Distribution of the expert's goal stage: half "collect_diamond", the rest uniform over earlier stages."""
  p = np.full((len(STAGES),), 0.5 / (len(STAGES) - 1))
  p[-1] = 0.5
  return p


def goal_probs(goals: Sequence[str] | None = None) -> np.ndarray:
  """Distribution of the expert's goal stage: uniform over the stages named in `goals` (achievement
  names of STAGES), or `default_goal_probs` when `goals` is None or empty.

  Raises:
    ValueError: a name that is not a stage, naming the stages there are.
  """
  if not goals:
    return default_goal_probs()
  names = [s[0] for s in STAGES]
  unknown = [g for g in goals if g not in names]
  if unknown:
    raise ValueError(f"unknown goal {unknown[0]!r}; choose among the stages {', '.join(names)}")
  p = np.zeros((len(STAGES),))
  p[[names.index(g) for g in goals]] = 1.0
  return p / p.sum()


def collect_batched(
  env: CraftaxClassic,
  episode_seeds: Callable[[int], tuple[int, int, float]],
  skills: Sequence[float],
  *,
  num_envs: int = 64,
  chunk: int = 64,
  max_episodes: int | None = None,
  max_frames: int | None = None,
  sink: Callable[[list[dict[str, Any]]], None],
  log: Callable[[str], None] | None = None,
  goals: Sequence[str] | None = None,
) -> dict[str, Any]:
  """Runs the scripted expert in `num_envs` Craftax envs at once and hands finished episodes to `sink`.

  Episode k gets (env seed, policy seed, u) = episode_seeds(k): its world comes from the env
  seed, its skill is skills[int(u * len(skills))] and its goal stage is drawn from
  `goal_probs(goals)` with the policy seed (its task label is that stage's achievement).

  Args:
    env: the wrapper whose size and max_steps the episodes take.
    episode_seeds: k -> (env seed, policy seed, u in [0, 1)) of episode k.
    skills: expert skills to mix, each in [0, 1].
    num_envs: envs stepped together (vmap width).
    chunk: steps per jitted scan call; finished slots get a new world between calls.
    max_episodes: stop starting episodes after this many (None: no limit).
    max_frames: stop starting episodes once this many frames are collected or under way (None: no limit).
    sink: called with lists of finished episodes (dicts of EpisodeStore.append arguments plus
      "extra": {"achievement_unlocks": uint8 [T, 22]}), in episode order.
    log: optional progress printer.
    goals: the goal stages to draw from, uniformly (achievement names of STAGES); None or empty:
      `default_goal_probs` (half "collect_diamond", the rest spread over the earlier stages).

  Returns:
    Summary: episodes, frames, seconds, frames_per_second, steps_per_second (env steps
    including idle slots), returns, successes (per episode: goal achievement reached).
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  if max_episodes is None and max_frames is None:
    raise ValueError("collect_batched: give max_episodes or max_frames")
  probs = goal_probs(goals)

  def episode_params(k):
    """(env seed, skill, goal stage) of episode k."""
    env_seed, policy_seed, u = episode_seeds(k)
    goal = int(np.random.default_rng(policy_seed).choice(len(probs), p=probs))
    return env_seed, skills[int(u * len(skills))], goal

  num_envs = max(1, min(num_envs, max_episodes or num_envs))
  new_worlds, merge, rollout = programs(env.size, env.max_steps, chunk)
  no_force = jnp.full((chunk, num_envs), -1, jnp.int32)
  t0 = time.perf_counter()

  next_episode = 0
  frames_started = 0  # frames of finished episodes plus steps of running ones (budget check)
  reserve: dict[str, Any] = {}

  def can_start():
    if max_episodes is not None and next_episode >= max_episodes:
      return False
    return max_frames is None or frames_started < max_frames

  def fetch_reserve(first):
    """Worlds for episodes first .. first + num_envs - 1, generated in one batched call."""
    seeds, episode_skills, goal_ids = zip(*(episode_params(k) for k in range(first, first + num_envs)))
    keys = [episode_keys(s) for s in seeds]
    reset_keys, step_keys, policy_keys = (jnp.stack([k[i] for k in keys]) for i in range(3))
    frames, states = new_worlds(reset_keys)
    return {
      "first": first,
      "frames": np.asarray(frames),
      "states": states,
      "step_keys": step_keys,
      "policy_keys": policy_keys,
      "skills": np.asarray(episode_skills, np.float32),
      "goals": np.asarray(goal_ids, np.int32),
    }

  # Slot bookkeeping on the host.
  slot_episode = np.full((num_envs,), -1)
  slot_parts: list[list[dict[str, np.ndarray]]] = [[] for _ in range(num_envs)]
  finished: dict[int, dict[str, Any]] = {}
  next_to_emit = 0
  returns: dict[int, float] = {}
  successes: dict[int, bool] = {}
  carry = None
  total_frames, env_steps = 0, 0
  last_log = -1e9

  def flush(assign, fresh_idx):
    """Moves the worlds reserve[fresh_idx[b]] into the slots b where assign[b]."""
    nonlocal carry
    if not assign.any():
      return
    idx = jnp.asarray(fresh_idx)
    if carry is None:
      carry = {
        "state": reserve["states"],
        "pstate": expert.policy_state(num_envs),
        "t": jnp.zeros((num_envs,), jnp.int32),
        "done": jnp.ones((num_envs,), bool),
        "step_key": reserve["step_keys"],
        "policy_key": reserve["policy_keys"],
        "goal": jnp.asarray(reserve["goals"]),
        "skill": jnp.asarray(reserve["skills"]),
      }
    carry = merge(
      carry,
      reserve["states"],
      idx,
      jnp.asarray(assign),
      reserve["step_keys"][idx],
      reserve["policy_keys"][idx],
      jnp.asarray(reserve["goals"][fresh_idx]),
      jnp.asarray(reserve["skills"][fresh_idx]),
    )

  def emit_ready():
    nonlocal next_to_emit
    batch = []
    while next_to_emit in finished:
      batch.append(finished.pop(next_to_emit))
      next_to_emit += 1
    if batch:
      sink(batch)

  while True:
    dead = slot_episode < 0
    if dead.any() and can_start():
      fresh_idx = np.zeros((num_envs,), np.int32)
      assign = np.zeros((num_envs,), bool)
      for b in np.flatnonzero(dead):
        if not can_start():
          break
        if not reserve or next_episode - reserve["first"] >= num_envs:
          flush(assign, fresh_idx)
          assign[:] = False
          reserve = fetch_reserve(next_episode)
        i = next_episode - reserve["first"]
        fresh_idx[b], assign[b] = i, True
        slot_episode[b] = next_episode
        slot_parts[b] = [
          {
            "frame": reserve["frames"][i][None],
            "action": np.zeros((1,), np.int32),
            "unlocked": np.zeros((1, len(ACHIEVEMENT_NAMES)), bool),
          }
        ]
        next_episode += 1
        frames_started += 1
      flush(assign, fresh_idx)
    active = slot_episode >= 0
    if not active.any():
      break
    carry, out = rollout(carry, no_force)
    out = jax.device_get(out)
    env_steps += chunk * num_envs
    for b in np.flatnonzero(active):
      k = int(slot_episode[b])
      live = ~out["was_done"][:, b]
      n = int(live.sum())
      slot_parts[b].append(
        {"frame": out["frame"][:n, b], "action": out["action"][:n, b], "unlocked": out["unlocked"][:n, b]}
      )
      frames_started += n
      if n < chunk or out["done"][chunk - 1, b]:
        goal = int(episode_params(k)[2])
        ep = _finish(slot_parts[b], goal)
        finished[k] = ep
        returns[k] = float(ep["rewards_T"].sum())
        successes[k] = bool(ep["extra"]["achievement_unlocks"][:, STAGE_ACHIEVEMENTS[goal]].any())
        total_frames += ep["frames_THWC"].shape[0]
        slot_parts[b] = []
        slot_episode[b] = -1
    emit_ready()
    secs = time.perf_counter() - t0
    if log is not None and secs - last_log >= 30.0:
      last_log = secs
      log(f"craftax: {len(successes)} episodes, {total_frames} frames, {total_frames / secs:.0f} frames/s")
  emit_ready()
  seconds = time.perf_counter() - t0
  keys = sorted(successes)
  return {
    "episodes": len(keys),
    "frames": total_frames,
    "seconds": seconds,
    "frames_per_second": total_frames / max(seconds, 1e-9),
    "steps_per_second": env_steps / max(seconds, 1e-9),
    "returns": [returns[k] for k in keys],
    "successes": [successes[k] for k in keys],
  }


def _finish(parts: Sequence[dict[str, np.ndarray]], goal_stage: int) -> dict[str, Any]:
  """One finished episode as EpisodeStore.append arguments (first frame: null action, unlabelled)."""
  frames = np.concatenate([p["frame"] for p in parts])
  actions = np.concatenate([p["action"] for p in parts]).astype(np.int32)[:, None]
  unlocked = np.concatenate([p["unlocked"] for p in parts]).astype(np.uint8)
  t = frames.shape[0]
  return {
    "frames_THWC": frames,
    "actions_discrete_TA": actions,
    "rewards_T": unlocked.sum(-1).astype(np.float32),
    "tasks_T": np.full((t,), STAGE_ACHIEVEMENTS[goal_stage], np.int32),
    "action_labelled_T": np.arange(t) > 0,
    "extra": {"achievement_unlocks": unlocked},
  }
