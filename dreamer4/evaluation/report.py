r"""The real-environment results table: its rows, mean ± std across seeds, and the written table.

A `Row` is one agent's line of the table [P §4.1, Table 7]: built by `env_eval.evaluate`
(real episodes of a policy) or `env_eval.behaviour_table` (a dataset's own episodes), or by
`aggregate_seeds` from the rows of several seeds.

- `aggregate_seeds(rows)` turns rows of several seeds into one row of mean ± std across seeds.
- `write_table(rows, workdir)` writes `results.md`, `results.json`, TensorBoard scalars
  `env_eval/<row>/<metric>` and GIF videos (`workdir/videos/env_eval_<row>.gif`).
- `to_markdown(rows)` and `flat_metrics(row)` are the table and the scalars on their own.

`Row.to_json()` is a row in results.json: the fields below under the same names ("return" for
`returns`), with the fields of the other kind of row (one run vs. several seeds) left out.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

STRIP_FRAMES = 16  # frames per episode in the TensorBoard image strip
MAX_GIF_FRAMES = 400  # longer episodes are subsampled in the GIF


@dataclasses.dataclass(frozen=True)
class TaskScore:
  """Success on one task: counts and rate (mean across seeds, with its std, for aggregated rows)."""

  episodes: int
  successes: int
  success_rate: float
  success_rate_std: float | None = None


@dataclasses.dataclass(frozen=True)
class Spread:
  """Mean and std of a per-episode quantity, over the episodes of one run or across seeds' means."""

  mean: float
  std: float
  over: str  # "episodes" or "seeds"


@dataclasses.dataclass
class Row:
  """One row of the table.

  Attributes:
    env, policy: the env name and the policy's label.
    episodes: episodes counted (summed over seeds for aggregated rows).
    tasks: task name -> TaskScore, for the tasks that have episodes.
    mean_success: the unweighted mean of the tasks' success rates ([P Table 7] averages items).
    success_rate: successes / episodes over all episodes (mean across seeds when aggregated).
    returns, length: episode return and length (steps).
    achievements: achievement name -> share of all episodes that unlocked it (envs with
      achievements), else None.
    videos, video_tasks: uint8 [T, H, W, C] frames of a few episodes, and their task names.
    seed: one `evaluate` run: its base seed.
    dataset: a `behaviour_table` row: the store it counts.
    per_episode: one run: per-episode lists "task", "return", "length", "success" (and
      "terminal" from `evaluate`).
    seeds: aggregated rows: each seed row's `seed`; then also the *_std fields (std across
      seeds) and per_seed (each seed's index, seed, mean_success, return_mean and task rates).
  """

  env: str
  policy: str
  episodes: int
  tasks: dict[str, TaskScore]
  mean_success: float
  success_rate: float
  returns: Spread
  length: Spread
  achievements: dict[str, float] | None = None
  videos: list[np.ndarray] = dataclasses.field(default_factory=list)
  video_tasks: list[str] = dataclasses.field(default_factory=list)
  seed: int | None = None
  dataset: str | None = None
  per_episode: dict[str, list] | None = None
  seeds: list[int | None] | None = None
  mean_success_std: float | None = None
  success_rate_std: float | None = None
  achievements_std: dict[str, float] | None = None
  per_seed: list[dict[str, Any]] | None = None

  @property
  def num_seeds(self) -> int:
    return 1 if self.seeds is None else len(self.seeds)

  def to_json(self) -> dict[str, Any]:
    """The row as in results.json (no videos)."""
    out: dict[str, Any] = {
      "env": self.env,
      "policy": self.policy,
      "episodes": self.episodes,
      "tasks": {t: {k: v for k, v in dataclasses.asdict(s).items() if v is not None} for t, s in self.tasks.items()},
      "mean_success": self.mean_success,
      "success_rate": self.success_rate,
      "return": dataclasses.asdict(self.returns),
      "length": dataclasses.asdict(self.length),
      "achievements": self.achievements,
    }
    for key in (
      "per_episode",
      "seed",
      "dataset",
      "seeds",
      "mean_success_std",
      "success_rate_std",
      "achievements_std",
      "per_seed",
    ):
      if getattr(self, key) is not None:
        out[key] = getattr(self, key)
    if self.seeds is not None:
      out["num_seeds"] = self.num_seeds
    out["video_tasks"] = list(self.video_tasks)
    return out


# ---------------------------------------------------------------------------- seeds


def flat_metrics(row: Row) -> dict[str, float]:
  """A row's scalars: success/<task>, mean_success, return_mean/std, length_mean/std, achievement/<name>
  (and, for rows from `aggregate_seeds`, success_seed_std/<task> and mean_success_seed_std)."""
  out = {f"success/{t}": float(v.success_rate) for t, v in row.tasks.items()}
  out["mean_success"] = float(row.mean_success)
  for k, spread in (("return", row.returns), ("length", row.length)):
    out[f"{k}_mean"] = float(spread.mean)
    out[f"{k}_std"] = float(spread.std)
  for name, v in (row.achievements or {}).items():
    out[f"achievement/{name}"] = float(v)
  for t, v in row.tasks.items():
    if v.success_rate_std is not None:
      out[f"success_seed_std/{t}"] = float(v.success_rate_std)
  if row.mean_success_std is not None:
    out["mean_success_seed_std"] = float(row.mean_success_std)
  return out


def aggregate_seeds(results: Sequence[Row]) -> Row:
  """One row of mean ± std across seeds from the rows of several seeds (same env, same tasks).

  Success rates, mean success, achievements: mean across seeds, std (sample std, ddof=1;
  0 for one seed) in `success_rate_std`, `mean_success_std`, `achievements_std`; each seed's
  mean success, mean return and per-task success in `per_seed`. Return and
  length: the mean across seeds of the per-seed means, and their std across seeds
  (over "seeds"). Episode and success counts are summed. Videos come from the first row.

  Raises:
    ValueError: no rows, or rows of different envs or task sets.
  """
  results = list(results)
  if not results:
    raise ValueError("aggregate_seeds: results is empty; give the rows of one or more seeds")
  env, tasks = results[0].env, list(results[0].tasks)
  for r in results[1:]:
    if r.env != env or list(r.tasks) != tasks:
      raise ValueError(
        f"aggregate_seeds: rows differ in env or tasks ({r.env} {list(r.tasks)} vs "
        f"{env} {tasks}); aggregate runs of one evaluation setting only"
      )

  def ms(values) -> tuple[float, float]:
    v = np.asarray(values, np.float64)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0

  scores = {}
  for t in tasks:
    m, s = ms([r.tasks[t].success_rate for r in results])
    scores[t] = TaskScore(
      episodes=int(sum(r.tasks[t].episodes for r in results)),
      successes=int(sum(r.tasks[t].successes for r in results)),
      success_rate=m,
      success_rate_std=s,
    )
  mean_success, mean_success_std = ms([r.mean_success for r in results])
  success_rate, success_rate_std = ms([r.success_rate for r in results])
  returns, length = (Spread(*ms([getattr(r, k).mean for r in results]), over="seeds") for k in ("returns", "length"))
  achievements = achievements_std = None
  if all(r.achievements is not None for r in results):
    achievements, achievements_std = {}, {}
    for name in results[0].achievements:
      achievements[name], achievements_std[name] = ms([r.achievements[name] for r in results])
  return Row(
    env=env,
    policy=results[0].policy,
    episodes=int(sum(r.episodes for r in results)),
    tasks=scores,
    mean_success=mean_success,
    success_rate=success_rate,
    returns=returns,
    length=length,
    achievements=achievements,
    videos=list(results[0].videos),
    video_tasks=list(results[0].video_tasks),
    seeds=[r.seed for r in results],
    mean_success_std=mean_success_std,
    success_rate_std=success_rate_std,
    achievements_std=achievements_std,
    # Each seed's own numbers, so paired comparisons between agents stay possible.
    # "index": the position in `results` (the pipeline's training seed); "seed": the row's env seed.
    per_seed=[
      {
        "index": i,
        "seed": r.seed,
        "mean_success": float(r.mean_success),
        "return_mean": float(r.returns.mean),
        "tasks": {t: float(r.tasks[t].success_rate) for t in tasks},
      }
      for i, r in enumerate(results)
    ],
  )


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


def paired_differences(rows: dict[str, Row]) -> list[dict[str, Any]]:
  """The last seeded row (the table's final agent, e.g. Dreamer 4) against every other row, seed by
  seed: against another seeded row with the same seed indices the difference is per seed (paired);
  against an unseeded row (e.g. the behaviour data) it is each seed's score minus that row's one
  number. Mean success, in [0, 1]."""
  seeded = [n for n, r in rows.items() if r.per_seed]
  if not seeded:
    return []
  last = rows[seeded[-1]]
  own = {p["index"]: p["mean_success"] for p in last.per_seed}
  out = []
  for name, r in rows.items():
    if name == seeded[-1]:
      continue
    if r.per_seed:
      other = {p["index"]: p["mean_success"] for p in r.per_seed}
      if set(other) != set(own):
        continue  # different seeds: nothing to pair
    else:
      other = {i: float(r.mean_success) for i in own}
    diffs = [own[i] - other[i] for i in sorted(own)]
    out.append(
      {
        "agent": seeded[-1],
        "against": name,
        "indices": sorted(own),
        "differences": diffs,
        "positive": sum(d > 0 for d in diffs),
        "mean": float(np.mean(diffs)),
      }
    )
  return out


def paired_lines(rows: dict[str, Row]) -> list[str]:
  found = paired_differences(rows)
  if not found:
    return []
  lines = ["", "Paired differences in mean success (percentage points, seed by seed):", ""]
  for d in found:
    per = ", ".join(f"{i}: {100 * x:+.1f}" for i, x in zip(d["indices"], d["differences"]))
    lines.append(
      f"- {d['agent']} − {d['against']}: {per} (positive on {d['positive']} of {len(d['differences'])} "
      f"seeds, mean {100 * d['mean']:+.1f})"
    )
  return lines


def to_markdown(rows: dict[str, Row]) -> str:
  """The results table (agents as rows, success % per task as columns) and, for envs with
  achievements, a second table with achievements as rows and agents as columns (as [P Table 7])."""
  tasks: list[str] = []
  for r in rows.values():
    tasks += [t for t in r.tasks if t not in tasks]
  head = ["agent"] + tasks + ["mean success", "return", "length", "episodes", "seeds"]
  lines = [
    "# Real-environment evaluation",
    "",
    "Success rate (%) per task over real episodes [P §4.1, Table 7]. ± is the std over "
    "episodes (return, length) for a single run, and the std across seeds for aggregated rows.",
    "",
    "| " + " | ".join(head) + " |",
    "|---|" + "---:|" * (len(head) - 1),
  ]
  for name, r in rows.items():
    cells = [name]
    for t in tasks:
      v = r.tasks.get(t)
      cells.append(_cell(v.success_rate, v.success_rate_std) if v else "—")
    cells.append(_cell(r.mean_success, r.mean_success_std))
    cells.append(f"{r.returns.mean:.2f} ± {r.returns.std:.2f}")
    cells.append(f"{r.length.mean:.1f} ± {r.length.std:.1f}")
    cells.append(str(r.episodes))
    cells.append(str(r.num_seeds))
    lines.append("| " + " | ".join(cells) + " |")
  seeded = {n: r for n, r in rows.items() if r.per_seed}
  if seeded:
    lines += ["", "Mean success (%) of each seed (the index of the run: seed 0, 1, ...):", ""]
    for name, r in seeded.items():
      seeds = ", ".join(f"{p['index']}: {_pct(p['mean_success'])}" for p in r.per_seed)
      lines.append(f"- {name}: {seeds}")
    lines += paired_lines(rows)
  with_ach = {n: r for n, r in rows.items() if r.achievements}
  if with_ach:
    achs: list[str] = []
    for r in with_ach.values():
      achs += [a for a in r.achievements if a not in achs]
    lines += [
      "",
      "## Achievements (% of all episodes that unlocked each)",
      "",
      "| item | " + " | ".join(with_ach) + " |",
      "|---|" + "---:|" * len(with_ach),
    ]
    for a in achs:
      cells = [a]
      for r in with_ach.values():
        v = r.achievements.get(a)
        cells.append(_cell(v, (r.achievements_std or {}).get(a)) if v is not None else "—")
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


def write_table(rows: dict[str, Row], workdir: str, *, step: int = 0, fps: int = 8) -> dict[str, Any]:
  """Writes the table of `rows` (row name -> Row).

  Files: workdir/results.md, workdir/results.json ({"rows": {name: row.to_json()},
  "tags": {name: slug}, "paired": paired_differences(rows)}), both replaced atomically; workdir/videos/env_eval_<slug>.gif for
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
  _atomic_write(md, text)
  _atomic_write(
    js,
    json.dumps(
      {"rows": {n: r.to_json() for n, r in rows.items()}, "tags": tags, "paired": paired_differences(rows)},
      indent=1,
      default=float,
    ),
  )
  written = [md, js]

  writer = mt.create_writer(workdir)
  try:
    images = {}
    for name, r in rows.items():
      scalars = {f"env_eval/{tags[name]}/{k}": v for k, v in flat_metrics(r).items() if math.isfinite(v)}
      writer.write_scalars(step, scalars)
      if r.videos:
        v = _pad_videos(r.videos)
        gif_stride = max(1, -(-v.shape[1] // MAX_GIF_FRAMES))
        path = os.path.join(workdir, "videos", f"env_eval_{tags[name]}.gif")
        mt.write_gif(path, v[:, ::gif_stride], fps=fps)
        written.append(path)
        pick = np.unique(np.linspace(0, v.shape[1] - 1, min(STRIP_FRAMES, v.shape[1])).round().astype(int))
        strip = v[:, pick]
        images[f"env_eval/{tags[name]}/episodes"] = mt.image_grid(
          strip.reshape((-1,) + strip.shape[2:]), cols=len(pick)
        )[None]
    if images:
      writer.write_images(step, images)
    writer.write_texts(step, {"env_eval/table": text})
    writer.flush()
  finally:
    writer.close()
  return {"markdown": text, "written": written, "tags": tags}
