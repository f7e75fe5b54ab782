r"""Real-environment evaluation of policies: success per task, returns, videos, and a Table-7-style table.

PAPER §7.3 (Table 7) reports, per agent, the success rate of each task over many real
episodes. This module does the same for the project's envs (`data_pipelines.envs`):

- `evaluate(env_name, policy, ...)` plays `num_episodes` real episodes, `batch_size` envs at a
  time, and returns one *row*: success per task, mean success, return and episode length
  (mean and std), per-achievement rates (envs whose `info` has "achievements", e.g. craftax)
  and the frames of a few episodes for videos.
- `behaviour_table(store_path)` computes the same row from a dataset's episodes (the
  "behaviour data" row).
- `aggregate_seeds(rows)` turns rows of several seeds into one row of mean ± std across seeds.
- `write_table(rows, workdir)` writes `results.md`, `results.json`, TensorBoard scalars
  `env_eval/<row>/<metric>` and GIF videos (`workdir/videos/env_eval_<row>.gif`).

The policy protocol (numpy in, numpy out; the world-model policy implements it too):

  class Policy(Protocol):
    name: str
    def begin(self, frames_BHWC, tasks_B, rng) -> actions_BA
    def next(self, frames_BHWC, actions_BA, rng) -> actions_BA
    def bind(self, envs) -> None            # optional

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
- `bind(envs)`, if present, is called with the list of the B env objects right before each
  `begin`: reference policies that read the simulator state (the scripted expert) use it;
  learned policies should not have it.
- `name`: a short label (recorded in the row as "policy").

Definitions (the same for `evaluate` and `behaviour_table`):

- success of an episode: the env's `info["success"]` at its last step (toy: the task's goal
  was reached, a terminal with reward 1; craftax: the task's achievement was unlocked);
  for envs without that key: a terminal last step with positive reward. From a dataset:
  an episode with any positive reward, or, where the task is an achievement name and the
  store has `achievement_unlocks`, an episode that unlocked it (as `data_pipelines.report`).
- per-task success rate: successes / episodes of that task; "mean_success" is the
  unweighted mean over the tasks that have episodes (Table 7 averages items, not episodes).
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

import json
import math
import os
import re
from typing import Any, Protocol, Sequence

import numpy as np

from data_pipelines.envs import ENVS, make_env
from data_pipelines.envs.base import ActionSpec

SEED_STRIDE = 100003  # episode i of seed s resets with seed s * SEED_STRIDE + i
STRIP_FRAMES = 16  # frames per episode in the TensorBoard image strip
MAX_GIF_FRAMES = 400  # longer episodes are subsampled in the GIF


class Policy(Protocol):
  """Acts in B envs at once (see the module docstring for the contract)."""

  name: str

  def begin(self, frames_BHWC: np.ndarray, tasks_B: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    ...

  def next(self, frames_BHWC: np.ndarray, actions_BA: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    ...


# ---------------------------------------------------------------------------- reference policies


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


class ScriptedPolicyAdapter:
  """ToyWorld's `ScriptedPolicy` (greedy toward the task goal with probability `skill`) behind `Policy`.

  It reads the simulator state, so `evaluate` hands it the env objects through `bind(envs)`.
  Each episode gets its own `ScriptedPolicy`, seeded from the batch's rng.

  Args:
    skill: probability in [0, 1] of the greedy action (1.0 is the near-expert).
    name: label of the policy (default "scripted_<skill>").
  """

  def __init__(self, skill: float, name: str | None = None):
    if not 0.0 <= skill <= 1.0:
      raise ValueError(f"ScriptedPolicyAdapter: skill must be in [0, 1], got {skill}")
    self.skill = float(skill)
    self.name = name or f"scripted_{skill:g}"
    self._envs: list[Any] = []
    self._policies: list[Any] = []

  def bind(self, envs: Sequence[Any]) -> None:
    for env in envs:
      if not hasattr(env, "greedy_action"):
        raise ValueError(f"ScriptedPolicyAdapter: env {getattr(env, 'name', env)!r} has no greedy_action; "
                         "the scripted policy works on the toy env only")
    self._envs = list(envs)

  def _act(self) -> np.ndarray:
    return np.stack([p(env) for p, env in zip(self._policies, self._envs)]).astype(np.int32)

  def begin(self, frames_BHWC, tasks_B, rng):
    from data_pipelines.envs.toy import ScriptedPolicy  # pylint: disable=g-import-not-at-top
    if len(self._envs) != len(frames_BHWC):
      raise ValueError(f"ScriptedPolicyAdapter: bound to {len(self._envs)} envs but got {len(frames_BHWC)} "
                       "frames; call bind(envs) before begin")
    self._policies = [ScriptedPolicy(self.skill, int(s)) for s in rng.integers(0, 2**31 - 1, len(frames_BHWC))]
    return self._act()

  def next(self, frames_BHWC, actions_BA, rng):
    return self._act()


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
    raise ValueError(f"policy {getattr(policy, 'name', policy)!r}: {where} returned actions of shape "
                     f"{list(a.shape)} and dtype {a.dtype}; expected int [{b}, {cols}]")
  return a.astype(np.int32)


def _stats(x) -> dict[str, float]:
  x = np.asarray(x, np.float64)
  return {"mean": float(x.mean()) if x.size else 0.0, "std": float(x.std()) if x.size else 0.0}


def _summarise(env_name: str, policy_name: str, task_names: Sequence[str], task_B: np.ndarray,
               return_B: np.ndarray, length_B: np.ndarray, success_B: np.ndarray,
               ach_names: Sequence[str] | None, ach_BK: np.ndarray | None) -> dict[str, Any]:
  """The row of a set of episodes (per-episode arrays of equal length)."""
  tasks = {}
  for k, name in enumerate(task_names):
    mine = task_B == k
    n = int(mine.sum())
    if n:
      s = int(success_B[mine].sum())
      tasks[name] = {"episodes": n, "successes": s, "success_rate": s / n}
  row: dict[str, Any] = {
      "env": env_name,
      "policy": policy_name,
      "episodes": int(len(task_B)),
      "tasks": tasks,
      "mean_success": float(np.mean([t["success_rate"] for t in tasks.values()])) if tasks else 0.0,
      "success_rate": float(np.mean(success_B)) if len(success_B) else 0.0,
      "return": _stats(return_B) | {"over": "episodes"},
      "length": _stats(length_B) | {"over": "episodes"},
      "achievements": None,
      "per_episode": {"task": [int(x) for x in task_B], "return": [float(x) for x in return_B],
                      "length": [int(x) for x in length_B], "success": [bool(x) for x in success_B]},
  }
  if ach_BK is not None:
    row["achievements"] = {name: float(ach_BK[:, i].mean()) if len(ach_BK) else 0.0
                           for i, name in enumerate(ach_names)}
  return row


def evaluate(env_name: str, policy: Policy, *, num_episodes: int, seed: int, batch_size: int,
             env_kwargs: dict[str, Any] | None = None, max_steps: int | None = None, video_episodes: int = 2,
             tasks: Sequence[str] | None = None) -> dict[str, Any]:
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
    video_episodes: keep the frames of the first this many episodes (row["videos"]).
    tasks: task names to cycle through (default: all of the env's tasks).

  Returns:
    The row: env, policy, seed, episodes, tasks {name: {episodes, successes, success_rate}},
    mean_success, success_rate (over all episodes), return {mean, std}, length {mean, std},
    achievements ({name: rate} or None), per_episode {task, return, length, success,
    terminal}, videos (list of uint8 [T, H, W, C]) and video_tasks (their task names).

  Raises:
    ValueError: unknown env or task, bad counts, or malformed actions from the policy.
  """
  if env_name not in ENVS:
    raise ValueError(f"env_name: unknown env {env_name!r}; choose one of {', '.join(sorted(ENVS))}")
  for key, value, low in (("num_episodes", num_episodes, 1), ("batch_size", batch_size, 1), ("seed", seed, 0),
                          ("video_episodes", video_episodes, 0)):
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
    if hasattr(policy, "bind"):
      policy.bind(benvs)
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
    for j, fr in recorded.items():
      videos.append(np.stack(fr))

  row = _summarise(env_name, policy_name, task_names, task_E, return_E, length_E, success_E, ach_names, ach_EK)
  row["seed"] = int(seed)
  row["per_episode"]["terminal"] = [bool(x) for x in terminal_E]
  row["videos"] = videos
  row["video_tasks"] = [task_names[int(task_E[i])] for i in range(min(video_episodes, num_episodes))]
  return row


def behaviour_table(store_path: str, *, video_episodes: int = 2, tasks: Sequence[str] | None = None
                    ) -> dict[str, Any]:
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
  row = _summarise(store.metadata["env"], "behaviour", task_names, task_E[ids].astype(np.int32), return_E[ids],
                   length_E[ids], success_E[ids], ach_names or None, None if ach_EK is None else ach_EK[ids])
  row["dataset"] = store.path
  starts = store.episode_offsets[:-1]
  shown = ids[:video_episodes]
  row["videos"] = [store.read("frames", int(starts[i]), int(starts[i] + store.episode_lengths[i])) for i in shown]
  row["video_tasks"] = [task_names[int(task_E[i])] for i in shown]
  return row


# ---------------------------------------------------------------------------- seeds


def flat_metrics(row: dict[str, Any]) -> dict[str, float]:
  """A row's scalars: success/<task>, mean_success, return_mean/std, length_mean/std, achievement/<name>
  (and, for rows from `aggregate_seeds`, success_seed_std/<task> and mean_success_seed_std)."""
  out = {f"success/{t}": float(v["success_rate"]) for t, v in row["tasks"].items()}
  out["mean_success"] = float(row["mean_success"])
  for k in ("return", "length"):
    out[f"{k}_mean"] = float(row[k]["mean"])
    out[f"{k}_std"] = float(row[k]["std"])
  for name, v in (row.get("achievements") or {}).items():
    out[f"achievement/{name}"] = float(v)
  for t, v in row["tasks"].items():
    if "success_rate_std" in v:
      out[f"success_seed_std/{t}"] = float(v["success_rate_std"])
  if "mean_success_std" in row:
    out["mean_success_seed_std"] = float(row["mean_success_std"])
  return out


def aggregate_seeds(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
  """One row of mean ± std across seeds from the rows of several seeds (same env, same tasks).

  Success rates, mean success, achievements: mean across seeds, std (sample std, ddof=1;
  0 for one seed) in `success_rate_std`, `mean_success_std`, `achievements_std`; each seed's
  mean success, mean return and per-task success in `per_seed`. Return and
  length: the mean across seeds of the per-seed means, and their std across seeds
  ("over": "seeds"). Episode and success counts are summed. Videos come from the first row.

  Raises:
    ValueError: no rows, or rows of different envs or task sets.
  """
  results = list(results)
  if not results:
    raise ValueError("aggregate_seeds: results is empty; give the rows of one or more seeds")
  env, tasks = results[0]["env"], list(results[0]["tasks"])
  for r in results[1:]:
    if r["env"] != env or list(r["tasks"]) != tasks:
      raise ValueError(f"aggregate_seeds: rows differ in env or tasks ({r['env']} {list(r['tasks'])} vs "
                       f"{env} {tasks}); aggregate runs of one evaluation setting only")

  def ms(values) -> tuple[float, float]:
    v = np.asarray(values, np.float64)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0

  out: dict[str, Any] = {"env": env, "policy": results[0].get("policy", ""),
                         "seeds": [r.get("seed") for r in results], "num_seeds": len(results),
                         "episodes": int(sum(r["episodes"] for r in results)), "tasks": {}}
  for t in tasks:
    m, s = ms([r["tasks"][t]["success_rate"] for r in results])
    out["tasks"][t] = {"episodes": int(sum(r["tasks"][t]["episodes"] for r in results)),
                       "successes": int(sum(r["tasks"][t]["successes"] for r in results)),
                       "success_rate": m, "success_rate_std": s}
  out["mean_success"], out["mean_success_std"] = ms([r["mean_success"] for r in results])
  out["success_rate"], out["success_rate_std"] = ms([r["success_rate"] for r in results])
  for k in ("return", "length"):
    m, s = ms([r[k]["mean"] for r in results])
    out[k] = {"mean": m, "std": s, "over": "seeds"}
  achs = [r.get("achievements") for r in results]
  if all(a is not None for a in achs):
    out["achievements"], out["achievements_std"] = {}, {}
    for name in achs[0]:
      out["achievements"][name], out["achievements_std"][name] = ms([a[name] for a in achs])
  else:
    out["achievements"] = None
  # Each seed's own numbers, so paired comparisons between agents stay possible.
  # "index": the position in `results` (the pipeline's training seed); "seed": the row's env seed.
  out["per_seed"] = [{"index": i, "seed": r.get("seed"), "mean_success": float(r["mean_success"]),
                      "return_mean": float(r["return"]["mean"]),
                      "tasks": {t: float(r["tasks"][t]["success_rate"]) for t in tasks}}
                     for i, r in enumerate(results)]
  out["videos"] = list(results[0].get("videos", []))
  out["video_tasks"] = list(results[0].get("video_tasks", []))
  return out


# ---------------------------------------------------------------------------- writing


def slug(name: str) -> str:
  """The TensorBoard/file-name form of a row name: runs of other characters than [A-Za-z0-9_.-] become "_"."""
  return re.sub(r"[^A-Za-z0-9_.\-]+", "_", name).strip("_") or "row"


def _pct(x: float) -> str:
  return f"{100.0 * x:.1f}"


def _cell(rate: float | None, std: float | None = None) -> str:
  if rate is None:
    return "—"
  return _pct(rate) if std is None else f"{_pct(rate)} ± {_pct(std)}"


def to_markdown(rows: dict[str, dict[str, Any]]) -> str:
  """The results table (agents as rows, success % per task as columns) and, for envs with
  achievements, a second table with achievements as rows and agents as columns (as Table 7)."""
  tasks: list[str] = []
  for r in rows.values():
    tasks += [t for t in r["tasks"] if t not in tasks]
  head = ["agent"] + tasks + ["mean success", "return", "length", "episodes", "seeds"]
  lines = ["# Real-environment evaluation", "",
           "Success rate (%) per task over real episodes (PAPER §7.3, Table 7). ± is the std over "
           "episodes (return, length) for a single run, and the std across seeds for aggregated rows.", "",
           "| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
  for name, r in rows.items():
    cells = [name]
    for t in tasks:
      v = r["tasks"].get(t)
      cells.append(_cell(v["success_rate"], v.get("success_rate_std")) if v else "—")
    cells.append(_cell(r["mean_success"], r.get("mean_success_std")))
    cells.append(f"{r['return']['mean']:.2f} ± {r['return']['std']:.2f}")
    cells.append(f"{r['length']['mean']:.1f} ± {r['length']['std']:.1f}")
    cells.append(str(r["episodes"]))
    cells.append(str(r.get("num_seeds", 1)))
    lines.append("| " + " | ".join(cells) + " |")
  seeded = {n: r for n, r in rows.items() if r.get("per_seed")}
  if seeded:
    lines += ["", "Mean success (%) of each seed (the index of the run: seed 0, 1, ...):", ""]
    for name, r in seeded.items():
      seeds = ", ".join(f"{p['index']}: {_pct(p['mean_success'])}" for p in r["per_seed"])
      lines.append(f"- {name}: {seeds}")
  with_ach = {n: r for n, r in rows.items() if r.get("achievements")}
  if with_ach:
    achs: list[str] = []
    for r in with_ach.values():
      achs += [a for a in r["achievements"] if a not in achs]
    lines += ["", "## Achievements (% of all episodes that unlocked each)", "",
              "| item | " + " | ".join(with_ach) + " |", "|---|" + "---:|" * len(with_ach)]
    for a in achs:
      cells = [a]
      for r in with_ach.values():
        v = r["achievements"].get(a)
        cells.append(_cell(v, (r.get("achievements_std") or {}).get(a)) if v is not None else "—")
      lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def _atomic_write(path: str, text: str) -> None:
  tmp = f"{path}.tmp.{os.getpid()}"
  with open(tmp, "w") as f:
    f.write(text)
  os.replace(tmp, path)


def _pad_videos(videos: Sequence[np.ndarray]) -> np.ndarray:
  """Episodes of different lengths as one [R, T, H, W, C] array (short ones hold their last frame)."""
  t = max(len(v) for v in videos)
  return np.stack([np.concatenate([v, np.repeat(v[-1:], t - len(v), 0)]) if len(v) < t else v for v in videos])


def write_table(rows: dict[str, dict[str, Any]], workdir: str, *, step: int = 0, fps: int = 8) -> dict[str, Any]:
  """Writes the table of `rows` (row name -> row of evaluate/behaviour_table/aggregate_seeds).

  Files: workdir/results.md, workdir/results.json ({"rows": {name: row without videos},
  "tags": {name: slug}}), both replaced atomically; workdir/videos/env_eval_<slug>.gif for
  rows with videos. TensorBoard (CLU writer on workdir): scalars `env_eval/<slug>/<metric>`
  for every metric of `flat_metrics`, an image strip `env_eval/<slug>/episodes` per row with
  videos, and the markdown as text `env_eval/table`, all at `step`.

  Returns:
    {"markdown": text, "written": [paths], "tags": {name: slug}}.

  Raises:
    ValueError: no rows.
  """
  if not rows:
    raise ValueError("write_table: rows is empty; give at least one row")
  from dreamer4.training import metrics as mt  # pylint: disable=g-import-not-at-top  (imports jax)
  os.makedirs(workdir, exist_ok=True)
  tags: dict[str, str] = {}
  for name in rows:
    s, k = slug(name), 1
    while s in tags.values():
      k += 1
      s = f"{slug(name)}_{k}"
    tags[name] = s
  text = to_markdown(rows)
  md, js = os.path.join(workdir, "results.md"), os.path.join(workdir, "results.json")
  plain = {n: {k: v for k, v in r.items() if k != "videos"} for n, r in rows.items()}
  _atomic_write(md, text)
  _atomic_write(js, json.dumps({"rows": plain, "tags": tags}, indent=1, default=float))
  written = [md, js]

  writer = mt.create_writer(workdir)
  try:
    images = {}
    for name, r in rows.items():
      scalars = {f"env_eval/{tags[name]}/{k}": v for k, v in flat_metrics(r).items() if math.isfinite(v)}
      writer.write_scalars(step, scalars)
      if r.get("videos"):
        v = _pad_videos(r["videos"])
        gif_stride = max(1, -(-v.shape[1] // MAX_GIF_FRAMES))
        path = os.path.join(workdir, "videos", f"env_eval_{tags[name]}.gif")
        mt.write_gif(path, v[:, ::gif_stride], fps=fps)
        written.append(path)
        pick = np.unique(np.linspace(0, v.shape[1] - 1, min(STRIP_FRAMES, v.shape[1])).round().astype(int))
        strip = v[:, pick]
        images[f"env_eval/{tags[name]}/episodes"] = mt.image_grid(
            strip.reshape((-1,) + strip.shape[2:]), cols=len(pick))[None]
    if images:
      writer.write_images(step, images)
    writer.write_texts(step, {"env_eval/table": text})
    writer.flush()
  finally:
    writer.close()
  return {"markdown": text, "written": written, "tags": tags}
