r"""Real-environment evaluation of policies: success per task, returns, videos, and a Table-7-style table.

The paper [P §4.1, Table 7] reports, per agent, the success rate of each task over many real
episodes. This module does the same for the project's envs (`data_pipelines.envs`):

- `evaluate(env_name, policy, ...)` plays `num_episodes` real episodes, `batch_size` envs at a
  time, and returns one `report.Row`: success per task, mean success, return and episode length
  (mean and std), per-achievement rates (envs whose `info` has "achievements", e.g. craftax)
  and the frames of a few episodes for videos.
- `behaviour_table(store_path)` computes the same row from a dataset's episodes (the
  "behaviour data" row).

report.py aggregates rows across seeds and writes the table (markdown, JSON, TensorBoard, GIFs).

The policy protocol (numpy in, numpy out; the world-model policy implements it too):

  class Policy(Protocol):
    name: str
    def begin(self, frames_BHWC, tasks_B, rng) -> actions_BA
    def next(self, frames_BHWC, actions_BA, rng) -> actions_BA

- `begin(frames_BHWC, tasks_B, rng)`: uint8 [B, H, W, C] first observations of B new
  episodes, their int32 [B] task ids (indices into `env.task_names`) and a
  `np.random.Generator` (seeded by `evaluate`: use it, not a global stream, so runs are
  reproducible). Returns int32 [B, Ad]: the first action of each episode, in the env's
  discrete action layout (`env.action_spec`: one column per discrete component, `size`
  0/1 columns per binary one).
- `next(frames_BHWC, actions_BA, rng)`: the observations that followed `actions_BA` (the
  actions the policy returned last); returns the next actions. Rows whose episode has
  ended keep receiving frames (their last frame, repeated) and their actions are ignored,
  so a batched policy keeps fixed shapes. A policy must not assume anything about rows of
  finished episodes beyond that.
- `name`: a short label (recorded in the row as "policy").

Definitions (the same for `evaluate` and `behaviour_table`):

- success of an episode: the env's `info["success"]` at its last step (toy: the task's goal
  was reached, a terminal with reward 1; craftax: the task's achievement was unlocked);
  for envs without that key: a terminal last step with positive reward. From a dataset:
  an episode with any positive reward, or, where the task is an achievement name and the
  store has `achievement_unlocks`, an episode that unlocked it (as `data_pipelines.report`).
- per-task success rate: successes / episodes of that task; "mean_success" is the
  unweighted mean over the tasks that have episodes ([P Table 7] averages items, not episodes).
- return: the sum of an episode's rewards; length: its number of steps (actions taken,
  i.e. frames - 1).
- achievements (craftax): per achievement, the share of all episodes that unlocked it.

Seeding: episode i of `evaluate(..., seed=s)` resets its env with seed `s * 100003 + i` and
task `tasks[i % len(tasks)]` (every task gets the same count, up to one when `num_episodes`
is not a multiple of the number of tasks); the policy of the batch starting at episode j
gets `np.random.default_rng([s, j])`. Same seed, same policy and same batch_size give
identical results.

Bad input (unknown env or task, bad counts, a policy returning malformed actions) raises
ValueError with one line naming the setting.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from data_pipelines.envs import ENVS, make_env
from data_pipelines.envs.base import ActionSpec
from dreamer4.evaluation.report import Row, Spread, TaskScore

SEED_STRIDE = 100003  # episode i of seed s resets with seed s * SEED_STRIDE + i


class Policy(Protocol):
  """Acts in B envs at once (see the module docstring for the contract)."""

  name: str

  def begin(self, frames_BHWC: np.ndarray, tasks_B: np.ndarray, rng: np.random.Generator) -> np.ndarray: ...

  def next(self, frames_BHWC: np.ndarray, actions_BA: np.ndarray, rng: np.random.Generator) -> np.ndarray: ...


# ---------------------------------------------------------------------------- reference policy


class RandomPolicy:
  """Uniformly random actions: each discrete component uniform over its classes, each binary bit a fair coin.

  Args:
    action_spec: the env's ActionSpec (continuous components are not supported).
  """

  name = "random"

  def __init__(self, action_spec: ActionSpec):
    if action_spec.continuous_columns:
      raise ValueError("RandomPolicy: action_spec has continuous components; evaluate takes discrete actions only")
    highs = []
    for comp in action_spec.components:
      highs += [comp.size] if comp.kind == "discrete" else [2] * comp.size
    self._high_A = np.asarray(highs, np.int64)

  def _sample(self, b: int, rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, self._high_A, size=(b, len(self._high_A))).astype(np.int32)

  def begin(self, frames_BHWC, tasks_B, rng):
    return self._sample(len(frames_BHWC), rng)

  def next(self, frames_BHWC, actions_BA, rng):
    return self._sample(len(frames_BHWC), rng)


# ---------------------------------------------------------------------------- evaluation


def _task_ids(env_name: str, task_names: Sequence[str], tasks: Sequence[str] | None) -> list[int]:
  if tasks is None:
    return list(range(len(task_names)))
  if isinstance(tasks, str):
    tasks = [tasks]
  if not tasks:
    raise ValueError(f"tasks: empty; give task names of env {env_name!r} ({', '.join(task_names)}) or None")
  out = []
  for t in tasks:
    if t not in task_names:
      raise ValueError(f"tasks: unknown task {t!r} for env {env_name!r}; choose from {', '.join(task_names)}")
    out.append(task_names.index(t))
  return out


def _check_actions(actions, b: int, cols: int, policy, where: str) -> np.ndarray:
  a = np.asarray(actions)
  if a.shape != (b, cols) or not (np.issubdtype(a.dtype, np.integer) or a.dtype == bool):
    raise ValueError(
      f"policy {getattr(policy, 'name', policy)!r}: {where} returned actions of shape "
      f"{list(a.shape)} and dtype {a.dtype}; expected int [{b}, {cols}]"
    )
  return a.astype(np.int32)


def _spread(x) -> Spread:
  x = np.asarray(x, np.float64)
  return Spread(mean=float(x.mean()) if x.size else 0.0, std=float(x.std()) if x.size else 0.0, over="episodes")


def _summarise(
  env_name: str,
  policy_name: str,
  task_names: Sequence[str],
  task_B: np.ndarray,
  return_B: np.ndarray,
  length_B: np.ndarray,
  success_B: np.ndarray,
  ach_names: Sequence[str] | None,
  ach_BK: np.ndarray | None,
) -> Row:
  """The row of a set of episodes (per-episode arrays of equal length)."""
  tasks = {}
  for k, name in enumerate(task_names):
    mine = task_B == k
    n = int(mine.sum())
    if n:
      s = int(success_B[mine].sum())
      tasks[name] = TaskScore(episodes=n, successes=s, success_rate=s / n)
  achievements = None
  if ach_BK is not None:
    achievements = {name: float(ach_BK[:, i].mean()) if len(ach_BK) else 0.0 for i, name in enumerate(ach_names)}
  return Row(
    env=env_name,
    policy=policy_name,
    episodes=int(len(task_B)),
    tasks=tasks,
    mean_success=float(np.mean([t.success_rate for t in tasks.values()])) if tasks else 0.0,
    success_rate=float(np.mean(success_B)) if len(success_B) else 0.0,
    returns=_spread(return_B),
    length=_spread(length_B),
    achievements=achievements,
    per_episode={
      "task": [int(x) for x in task_B],
      "return": [float(x) for x in return_B],
      "length": [int(x) for x in length_B],
      "success": [bool(x) for x in success_B],
    },
  )


def evaluate(
  env_name: str,
  policy: Policy,
  *,
  num_episodes: int,
  seed: int,
  batch_size: int,
  env_kwargs: dict[str, Any] | None = None,
  max_steps: int | None = None,
  video_episodes: int = 2,
  tasks: Sequence[str] | None = None,
) -> Row:
  """Plays `num_episodes` real episodes of `policy` in env `env_name`; returns their row.

  Args:
    env_name: registered env name (`data_pipelines.envs.ENVS`).
    policy: a `Policy` (see the module docstring).
    num_episodes: episodes to play (>= 1).
    seed: base seed (>= 0); episode i resets with `seed * 100003 + i`.
    batch_size: envs stepped together (the policy sees batches of up to this many rows).
    env_kwargs: constructor kwargs of the env (e.g. {"size": 64, "max_steps": 64}).
    max_steps: optional cap on the steps of an episode on top of the env's own truncation
      (an episode that hits it counts as truncated, not successful unless the env said so).
    video_episodes: keep the frames of the first this many episodes (row.videos).
    tasks: task names to cycle through (default: all of the env's tasks).

  Returns:
    The row (`report.Row`): tasks {name: TaskScore}, mean_success, success_rate (over all
    episodes), returns and length (mean, std over episodes), achievements ({name: rate} or
    None), seed, per_episode {task, return, length, success, terminal}, videos (list of uint8
    [T, H, W, C]) and video_tasks (their task names).

  Raises:
    ValueError: unknown env or task, bad counts, or malformed actions from the policy.
  """
  if env_name not in ENVS:
    raise ValueError(f"env_name: unknown env {env_name!r}; choose one of {', '.join(sorted(ENVS))}")
  for key, value, low in (
    ("num_episodes", num_episodes, 1),
    ("batch_size", batch_size, 1),
    ("seed", seed, 0),
    ("video_episodes", video_episodes, 0),
  ):
    if not isinstance(value, (int, np.integer)) or value < low:
      raise ValueError(f"{key}: must be an integer >= {low}, got {value!r}")
  if max_steps is not None and max_steps < 1:
    raise ValueError(f"max_steps: must be >= 1 or None, got {max_steps}")
  try:
    envs = [make_env(env_name, **(env_kwargs or {})) for _ in range(min(batch_size, num_episodes))]
  except (TypeError, ValueError) as e:
    raise ValueError(f"env_kwargs: {' '.join(str(e).split())}") from None
  task_names = tuple(envs[0].task_names)
  cycle = _task_ids(env_name, task_names, tasks)
  cols = envs[0].action_spec.discrete_columns
  policy_name = str(getattr(policy, "name", type(policy).__name__))

  task_E = np.asarray([cycle[i % len(cycle)] for i in range(num_episodes)], np.int32)
  return_E = np.zeros((num_episodes,), np.float64)
  length_E = np.zeros((num_episodes,), np.int64)
  success_E = np.zeros((num_episodes,), bool)
  terminal_E = np.zeros((num_episodes,), bool)
  ach_EK, ach_names = None, None
  videos: list[np.ndarray] = []

  for start in range(0, num_episodes, batch_size):
    ids = list(range(start, min(start + batch_size, num_episodes)))
    b = len(ids)
    benvs = envs[:b]
    frames = [env.reset(seed * SEED_STRIDE + i, task=int(task_E[i]))[0] for env, i in zip(benvs, ids)]
    recorded = {j: [frames[j]] for j, i in enumerate(ids) if i < video_episodes}
    rng = np.random.default_rng([seed, start])
    actions = _check_actions(policy.begin(np.stack(frames), task_E[ids].copy(), rng), b, cols, policy, "begin")
    done = np.zeros((b,), bool)
    while True:
      for j, (env, i) in enumerate(zip(benvs, ids)):
        if done[j]:
          continue
        frame, reward, env_done, info = env.step(actions[j])
        frames[j] = frame
        return_E[i] += reward
        length_E[i] += 1
        if j in recorded:
          recorded[j].append(frame)
        capped = max_steps is not None and length_E[i] >= max_steps
        if env_done or capped:
          done[j] = True
          terminal_E[i] = bool(info.get("terminal", False))
          success_E[i] = bool(info["success"]) if "success" in info else bool(terminal_E[i] and reward > 0)
          if "achievements" in info:
            got = np.asarray(info["achievements"], bool).reshape(-1)
            if ach_EK is None:
              names = tuple(getattr(env, "achievement_names", task_names))
              ach_names = names if len(names) == len(got) else tuple(f"achievement_{k}" for k in range(len(got)))
              ach_EK = np.zeros((num_episodes, len(got)), bool)
            ach_EK[i] = got
      if done.all():
        break
      actions = _check_actions(policy.next(np.stack(frames), actions, rng), b, cols, policy, "next")
    for fr in recorded.values():
      videos.append(np.stack(fr))

  row = _summarise(env_name, policy_name, task_names, task_E, return_E, length_E, success_E, ach_names, ach_EK)
  row.seed = int(seed)
  row.per_episode["terminal"] = [bool(x) for x in terminal_E]
  row.videos = videos
  row.video_tasks = [task_names[int(task_E[i])] for i in range(min(video_episodes, num_episodes))]
  return row


def behaviour_table(store_path: str, *, video_episodes: int = 2, tasks: Sequence[str] | None = None) -> Row:
  """The row of a dataset's own episodes (the behaviour policy), with the definitions of `evaluate`.

  Args:
    store_path: an EpisodeStore location.
    video_episodes: keep the frames of the first this many episodes.
    tasks: count only the episodes labelled with these task names (default: all), so the row
      compares with `evaluate(..., tasks=tasks)`.

  Raises:
    StoreError (a ValueError): the store is missing or broken; ValueError: it holds no episodes
    (of `tasks`), or a task name is unknown.
  """
  from data_pipelines.episodes import EpisodeStore  # pylint: disable=g-import-not-at-top
  from data_pipelines.report import episode_success  # pylint: disable=g-import-not-at-top

  store = EpisodeStore.open(store_path)
  if not store.num_episodes:
    raise ValueError(f"store_path: dataset {store_path} holds no episodes; collect some first")
  success_E, task_E, return_E, ach_EK, ach_names = episode_success(store)
  task_names = store.task_names
  keep = np.ones_like(success_E)
  if tasks is not None:
    keep = np.isin(task_E, _task_ids(store.metadata["env"], task_names, tasks))
    if not keep.any():
      raise ValueError(f"tasks: dataset {store_path} holds no episodes of {', '.join(tasks)}")
  ids = np.flatnonzero(keep)
  length_E = store.episode_lengths - 1
  row = _summarise(
    store.metadata["env"],
    "behaviour",
    task_names,
    task_E[ids].astype(np.int32),
    return_E[ids],
    length_E[ids],
    success_E[ids],
    ach_names or None,
    None if ach_EK is None else ach_EK[ids],
  )
  row.dataset = store.path
  starts = store.episode_offsets[:-1]
  shown = ids[:video_episodes]
  row.videos = [store.read("frames", int(starts[i]), int(starts[i] + store.episode_lengths[i])) for i in shown]
  row.video_tasks = [task_names[int(task_E[i])] for i in shown]
  return row
