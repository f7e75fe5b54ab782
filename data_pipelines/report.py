r"""Dataset report: what an EpisodeStore holds and how well its behaviour policy did.

  python -m data_pipelines.report PATH [--out=DIR]

Prints a markdown report and writes it as DIR/report.md and DIR/report.json
(DIR defaults to PATH for a local store; give --out for a kvstore URL).

Contents:
- episodes, frames, episode lengths, and the train/eval split sizes of
  EpisodeStore.split(0.1);
- per-episode return statistics (sum of rewards);
- per task name: episodes labelled with it, successes, success rate and reward
  events (frames with a positive reward). A success is an episode with any
  positive reward, or, where the task is also an achievement name (craftax),
  an episode that unlocked that achievement;
- for stores with an `achievement_unlocks` array (craftax): per achievement, the
  episodes that unlocked it and the success rate over all episodes;
- the action histogram over labelled frames (the null action of episode starts
  is left out): class counts per discrete component, on-counts per binary bit,
  mean and std per continuous dimension.

Bad input stops with one line on stderr starting with "error:" and exit code 2.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import numpy as np

from data_pipelines.errors import UserError

UNLOCKS = "achievement_unlocks"


def episode_success(store, data: dict[str, np.ndarray] | None = None):
  """Per episode, whether it accomplished its task (the report's definition).

  A task that is also an achievement name (craftax, with an `achievement_unlocks` array):
  the episode unlocked that achievement. Any other task: a positive sum of rewards.

  Args:
    store: an open EpisodeStore.
    data: optional arrays already read over all frames ("rewards", "tasks" and, where the
      store has it, UNLOCKS); read here when None.

  Returns:
    (success_E bool, task_E int64, return_E float64, unlocked_EK bool or None, achievement names).
  """
  n, e = store.num_frames, store.num_episodes
  has_unlocks = UNLOCKS in store.array_names
  if data is None:
    names = ["rewards", "tasks"] + ([UNLOCKS] if has_unlocks else [])
    data = store.read_many(names, 0, n) if n else {k: np.zeros((0,)) for k in names}
  starts = store.episode_offsets[:-1]
  returns = np.add.reduceat(data["rewards"].astype(np.float64), starts) if e else np.zeros((0,))
  task_E = data["tasks"][starts].astype(np.int64) if e else np.zeros((0,), np.int64)
  success = returns > 0
  unlocked, ach_names = None, []
  if has_unlocks:
    unlocks = np.asarray(data[UNLOCKS]).astype(np.int64)
    unlocked = np.maximum.reduceat(unlocks, starts, axis=0) > 0 if e else np.zeros((0, unlocks.shape[1]), bool)
    attrs = store.metadata["extra_arrays"][UNLOCKS].get("attrs", {})
    ach_names = list(attrs.get("names", [f"achievement_{i}" for i in range(unlocks.shape[1])]))
    for k, name in enumerate(store.task_names):
      if name in ach_names:  # the task is an achievement: success = that achievement unlocked
        mine = task_E == k
        success[mine] = unlocked[mine, ach_names.index(name)]
  return success, task_E, returns, unlocked, ach_names


def success_frames(store) -> np.ndarray:
  """Per episode, the global index of the frame on which it accomplished its task, or its last
  frame where it never did (int64 [episodes]).

  The success definition of `episode_success`: the frame whose unlock of the task's achievement
  is recorded, else the first frame with a positive reward. That frame's stored action is the one
  that accomplished the task (it was taken in the state of the frame before).
  """
  n, e = store.num_frames, store.num_episodes
  offsets = np.asarray(store.episode_offsets, np.int64)
  out = offsets[1:] - 1
  if not e:
    return out
  has_unlocks = UNLOCKS in store.array_names
  data = store.read_many(["rewards", "tasks"] + ([UNLOCKS] if has_unlocks else []), 0, n)
  success, task_E, _, _, ach_names = episode_success(store, data)
  for ep in np.nonzero(success)[0]:
    lo, hi = offsets[ep], offsets[ep + 1]
    name = store.task_names[int(task_E[ep])]
    if has_unlocks and name in ach_names:
      hit = np.asarray(data[UNLOCKS][lo:hi, ach_names.index(name)]) > 0
    else:
      hit = np.asarray(data["rewards"][lo:hi]) > 0
    out[ep] = lo + int(np.argmax(hit))
  return out


def _stats(x: np.ndarray) -> dict[str, float]:
  x = np.asarray(x, np.float64)
  if not x.size:
    return {"mean": 0.0, "std": 0.0, "min": 0.0, "median": 0.0, "max": 0.0}
  return {
    "mean": float(x.mean()),
    "std": float(x.std()),
    "min": float(x.min()),
    "median": float(np.median(x)),
    "max": float(x.max()),
  }


def compute_report(store) -> dict[str, Any]:
  """Every number of the report, as plain JSON-able data.

  Args:
    store: an open EpisodeStore.
  """
  n, e = store.num_frames, store.num_episodes
  offsets = store.episode_offsets
  lengths = np.diff(offsets)
  spec = store.action_spec
  names = ["rewards", "tasks", "action_labelled"]
  names += [a for a in ("actions_discrete", "actions_continuous") if a in store.array_names]
  has_unlocks = UNLOCKS in store.array_names
  if has_unlocks:
    names.append(UNLOCKS)
  data = store.read_many(names, 0, n) if n else {k: np.zeros((0,)) for k in names}
  starts = offsets[:-1]
  rewards = data["rewards"].astype(np.float64)
  reward_events = np.add.reduceat((rewards > 0).astype(np.int64), starts) if e else np.zeros((0,), np.int64)
  success_E, episode_task, returns, per_episode, ach_names = episode_success(store, data)
  train, evals = store.split(0.1)
  unlocks = data[UNLOCKS].astype(np.int64) if has_unlocks else None

  tasks = []
  for k, name in enumerate(store.task_names):
    mine = episode_task == k
    count = int(mine.sum())
    succ = int(success_E[mine].sum())
    tasks.append(
      {
        "task": name,
        "episodes": count,
        "successes": succ,
        "success_rate": succ / count if count else 0.0,
        "reward_events": int(reward_events[mine].sum()),
        "mean_return": float(returns[mine].mean()) if count else 0.0,
      }
    )

  achievements = None
  if has_unlocks:
    achievements = [
      {
        "achievement": ach_names[i],
        "episodes": int(per_episode[:, i].sum()),
        "success_rate": float(per_episode[:, i].mean()) if e else 0.0,
        "events": int(unlocks[:, i].sum()),
      }
      for i in range(unlocks.shape[1])
    ]

  labelled = data["action_labelled"].astype(bool)
  actions = []
  col_d, col_c = 0, 0
  for comp in spec.components:
    entry: dict[str, Any] = {"component": comp.name, "kind": comp.kind}
    if comp.kind == "discrete":
      x = data["actions_discrete"][labelled, col_d].astype(np.int64)
      counts = np.bincount(x, minlength=comp.size)[: comp.size]
      labels = list(comp.labels) if comp.labels else [str(i) for i in range(comp.size)]
      entry["counts"] = {labels[i]: int(counts[i]) for i in range(comp.size)}
      col_d += 1
    elif comp.kind == "binary":
      x = data["actions_discrete"][labelled, col_d : col_d + comp.size]
      labels = list(comp.labels) if comp.labels else [str(i) for i in range(comp.size)]
      entry["on_counts"] = {labels[i]: int((x[:, i] != 0).sum()) for i in range(comp.size)}
      col_d += comp.size
    else:
      x = data["actions_continuous"][labelled, col_c : col_c + comp.size].astype(np.float64)
      entry["mean"] = [float(v) for v in (x.mean(0) if len(x) else np.zeros(comp.size))]
      entry["std"] = [float(v) for v in (x.std(0) if len(x) else np.zeros(comp.size))]
      col_c += comp.size
    actions.append(entry)

  return {
    "path": store.path,
    "env": store.metadata["env"],
    "frame_shape": list(store.frame_shape),
    "episodes": e,
    "frames": n,
    "labelled_frames": int(labelled.sum()),
    "episode_length": _stats(lengths),
    "split": {"train_episodes": int(len(train)), "eval_episodes": int(len(evals)), "eval_fraction": 0.1},
    "returns": _stats(returns),
    "tasks": tasks,
    "achievements": achievements,
    "actions": actions,
  }


def _fmt(x: float) -> str:
  return f"{x:.3f}".rstrip("0").rstrip(".") if isinstance(x, float) else str(x)


def to_markdown(report: dict[str, Any]) -> str:
  """The report as a markdown document."""
  r = report
  lines = [
    f"# Dataset report: {r['path']}",
    "",
    f"- env: `{r['env']}`, frames {'x'.join(str(s) for s in r['frame_shape'])}",
    f"- episodes: {r['episodes']} (train {r['split']['train_episodes']}, eval {r['split']['eval_episodes']} "
    f"with split(0.1))",
    f"- frames: {r['frames']} ({r['labelled_frames']} with an action label)",
    "- episode length: " + ", ".join(f"{k} {_fmt(v)}" for k, v in r["episode_length"].items()),
    "- return per episode: " + ", ".join(f"{k} {_fmt(v)}" for k, v in r["returns"].items()),
    "",
    "## Tasks",
    "",
    "| task | episodes | successes | success rate | reward events | mean return |",
    "|---|---:|---:|---:|---:|---:|",
  ]
  for t in r["tasks"]:
    lines.append(
      f"| {t['task']} | {t['episodes']} | {t['successes']} | {t['success_rate']:.3f} | "
      f"{t['reward_events']} | {t['mean_return']:.3f} |"
    )
  if r["achievements"] is not None:
    lines += [
      "",
      "## Achievements (share of all episodes that unlocked each)",
      "",
      "| achievement | episodes | success rate |",
      "|---|---:|---:|",
    ]
    for a in r["achievements"]:
      lines.append(f"| {a['achievement']} | {a['episodes']} | {a['success_rate']:.3f} |")
  lines += ["", "## Actions (labelled frames)", ""]
  for a in r["actions"]:
    lines.append(f"### {a['component']} ({a['kind']})")
    lines.append("")
    if "counts" in a or "on_counts" in a:
      counts = a.get("counts", a.get("on_counts"))
      total = max(1, sum(counts.values()))
      lines += ["| action | count | share |", "|---|---:|---:|"]
      lines += [f"| {k} | {v} | {v / total:.3f} |" for k, v in counts.items()]
    else:
      lines += [f"- mean {a['mean']}", f"- std {a['std']}"]
    lines.append("")
  return "\n".join(lines).rstrip() + "\n"


def write_report(path: str, out: str | None = None) -> dict[str, Any]:
  """Computes the report of the store at `path` and writes report.md and report.json into `out`.

  Args:
    path: store location.
    out: output directory; defaults to `path` for a local store.

  Returns:
    The report dict, with "markdown" (the text) and "written" (the two file paths) added.

  Raises:
    StoreError: the store is missing or broken.
    UserError: no local output directory could be chosen.
  """
  from data_pipelines.episodes import EpisodeStore  # pylint: disable=g-import-not-at-top

  store = EpisodeStore.open(path)
  if out is None:
    if "://" in path and not path.startswith("file://"):
      raise UserError(f"--out: {path} is not a local directory; give --out=DIR for the report files")
    out = path[len("file://") :] if path.startswith("file://") else path
  report = compute_report(store)
  text = to_markdown(report)
  os.makedirs(out, exist_ok=True)
  md, js = os.path.join(out, "report.md"), os.path.join(out, "report.json")
  with open(md, "w") as f:
    f.write(text)
  with open(js, "w") as f:
    json.dump(report, f, indent=1)
  return dict(report, markdown=text, written=[md, js])


def _define_flags():
  from absl import flags  # pylint: disable=g-import-not-at-top

  flags.DEFINE_string("out", None, "Directory for report.md and report.json (default: the store directory).")


def main(argv):
  from absl import flags  # pylint: disable=g-import-not-at-top

  if len(argv) != 2:
    print("error: give exactly one store path: python -m data_pipelines.report PATH [--out=DIR]", file=sys.stderr)
    sys.exit(2)
  try:
    report = write_report(argv[1], flags.FLAGS.out)
  except (UserError, OSError) as e:  # StoreError included
    print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
    sys.exit(2)
  print(report["markdown"], end="")
  print(f"\nwrote {' and '.join(report['written'])}")


if __name__ == "__main__":
  from absl import app  # pylint: disable=g-import-not-at-top

  _define_flags()
  app.run(main)
