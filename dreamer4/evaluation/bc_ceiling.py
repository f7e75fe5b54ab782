r"""How well any next-action predictor can do on phase 2's held-out BC metric: trivial predictors
and an oracle that knows the behaviour policy's greedy action, on exactly the labels that
`eval/bc_accuracy_n0_relevant` scores on the toy world (its episodes end at their goal, so
`loss.bc_until_success` drops none of them; on Craftax use `dreamer4.evaluation.action_probe`).

  python -m dreamer4.evaluation.bc_ceiling --workdir=runs/toy [--out=runs/toy/bc_ceiling.json]
  python -m dreamer4.evaluation.bc_ceiling --data=runs/toy/data --agent_config=runs/toy/agent/config.json \
      --out=ceiling.json [--seed=0] [--skills=0.9,0.6,0.3,0.0] [--layout=fixed] [--max_steps=64]

--workdir is a pipeline workdir of the toy world (data/ is the store, agent/config.json the
phase-2 run's config; dreamer4/pipeline.py); --data and --agent_config name them one by one
(--data defaults to WORKDIR/data, else the agent config's data.path).

The labels are the metric's, taken through the library's own functions with the phase-2 run's
settings: the split (trainer.py: `store.split(data.eval_fraction, seed=data.split_seed)`), the
held-out windows (`data_pipelines.loader.eval_batches`: train.batch_size windows a batch,
eval.num_batches batches of data.window frames spread evenly over all held-out windows, the
agent phase's padding `AgentPhase.window_pad`), the "relevant" rows (`MixtureStreams.label_eval`:
windows of held-out episodes in `data_pipelines.loader.relevant_episode_ids`, those that
accomplished their task) and the label positions (`AgentPhase.eval_fn`: the target of frame t is
the action stored on frame t, i.e. the one taken in the state of frame t - 1, for t = 1 .. T-1,
where the action is labelled and the slot is no padding). A batch's accuracy is hits / labels
over its relevant labels (no label: left out), and "accuracy" is the unweighted mean of the
batches' accuracies (the trainer's `MeanMetrics`, NaNs skipped): the metric's number. "pooled"
is hits / labels over all of them.

Predictors (each with accuracy, pooled, hits, and per_skill: pooled over the labels of the
episodes collected at each skill):

  most_frequent    the most frequent labelled action of the training split's relevant episodes
                   (the labels BC trains on), predicted everywhere.
  repeat_previous  the window's action on the frame before the label (on an episode's first
                   frame: the stored null action).
  oracle_greedy    the behaviour policy's greedy action (ToyWorld.greedy_action) in the state the
                   label's action was taken in. The scripted policy takes it with probability
                   skill and a uniform action otherwise, so it is the most likely label in every
                   state: on unselected steps no predictor does better in expectation, whatever
                   it knows (state, task, skill). It is the metric's ceiling for a BC head, up to
                   the selection of relevant episodes (below), which makes other moves towards
                   the goal a little likelier than chance at skill 0.

The greedy actions come from a replay of the collection: every episode played again through the
collector's own loop (data_pipelines/collect.py `_play_episodes`, seeds `_episode_seeds`) with
the env's behaviour policy (data_pipelines/envs ENVS), recording before each step the greedy
action and whether the policy took its greedy branch. The workdir does not record how its data
was collected beyond the frame size (store metadata): seed, skills, layout and episode cap are
the defaults of configs/pipeline.py for the phase-2 run's variant (its config's "variant"),
unless flags set them; "collection" lists each value and its source. The replay must reproduce
the store ("replay": episodes whose actions (and length), frames, or tasks and rewards differ;
all 0), else nothing is reported. A store collected in several goes (an interrupted pipeline
collection resumes with seed + episodes held) does not replay.

per_skill, per skill of the scored labels: windows, labels, label_equals_greedy (the oracle's
pooled accuracy there), greedy_draws (share of labels drawn from the greedy branch) and nominal
(skill + (1 - skill) / actions, its expectation without selection). The relevant labels are
selected by success, which favours greedy steps (a skill-0 episode that reached its goal walked
towards it more than chance). "population" gives the same shares over every labelled frame of
all episodes, of the training split's relevant episodes (what BC learns from) and of the
held-out relevant ones; over all episodes no selection acts on a step before it is taken, so a
skill-0 share is 1 / actions up to binomial noise.

The report goes to --out as JSON (default WORKDIR/bc_ceiling.json, written to a temporary file
and renamed) and to stdout as a table. Bad input (a missing workdir, store or phase-2 config, a
store of an env other than the toy world, collection settings the replay does not reproduce)
stops with one line on stderr ("error: ..."), exit code 2, before anything is written.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from data_pipelines import loader as data_loader
from data_pipelines.collect import _episode_seeds, _play_episodes
from data_pipelines.envs import ENVS
from data_pipelines.episodes import EpisodeStore
from data_pipelines.windows import window_table
from dreamer4.errors import UserError
from dreamer4.evaluation import tool_io

METRIC = "eval/bc_accuracy_n0_relevant"
FIELDS = ("actions_discrete", "action_labelled", "rewards", "tasks")  # what a scored window reads
PREDICTORS = ("most_frequent", "repeat_previous", "oracle_greedy")
POPULATIONS = ("all_episodes", "train_relevant", "held_out_relevant")
TRAIN_HINT = "python -m dreamer4.main --config=configs/pipeline.py:toy --workdir=DIR"
FRAME_BLOCK = 4096  # frames read from the store at a time when checking the replay


# ---------------------------------------------------------------------------------- inputs


@dataclasses.dataclass(frozen=True)
class Inputs:
  """The store and the phase-2 config the ceiling reads."""

  workdir: str | None
  data: str
  agent_config: str


def locate(workdir: str | None, data: str | None = None, agent_config: str | None = None) -> Inputs:
  """The store and phase-2 config of `workdir` (or named by --data / --agent_config); UserError,
  one line naming the path and the fix, when one is missing."""
  if workdir:
    if not os.path.isdir(workdir):
      raise UserError(f"--workdir={workdir} does not exist; name a pipeline workdir (made by {TRAIN_HINT})")
    agent_config = agent_config or os.path.join(workdir, "agent", "config.json")
  if not agent_config:
    raise UserError("--workdir (a pipeline workdir, e.g. --workdir=runs/toy) or --agent_config is required")
  where = f"--workdir={workdir}" if workdir else f"--agent_config={agent_config}"
  hint = TRAIN_HINT.replace("DIR", workdir or "DIR")
  if not os.path.isfile(agent_config):
    raise UserError(
      f"{where}: no phase-2 config ({agent_config} is missing); train phase 2 first "
      f"({hint}) or name its config.json with --agent_config"
    )
  if not data:
    data = os.path.join(workdir, "data") if workdir else str(_read_json(agent_config)["data"].get("path") or "")
  if not data or not os.path.isfile(os.path.join(data, "metadata.json")):
    raise UserError(
      f"{where}: no dataset ({os.path.join(data or '?', 'metadata.json')} is missing); the pipeline's collect "
      f"stage writes it ({hint}), or name a store with --data"
    )
  return Inputs(workdir=workdir, data=data, agent_config=agent_config)


def _read_json(path: str) -> dict[str, Any]:
  try:
    with open(path) as f:
      out = json.load(f)
  except (OSError, ValueError) as e:
    raise UserError(f"{path}: cannot read it as JSON ({type(e).__name__}); name the run's config.json") from None
  if not isinstance(out, dict) or not isinstance(out.get("data"), dict):
    raise UserError(f"{path} is not a phase config (it has no data section); name the agent run's config.json")
  return out


@dataclasses.dataclass(frozen=True)
class MetricSettings:
  """The phase-2 settings that fix the metric's labels."""

  window: int
  batch_size: int
  num_batches: int
  eval_fraction: float
  split_seed: int
  variant: str


def metric_settings(path: str) -> MetricSettings:
  """The settings of the phase-2 config.json at `path`; UserError if it is not one."""
  cfg = _read_json(path)
  if cfg.get("phase") != "agent":
    raise UserError(
      f"{path} is the config of phase {cfg.get('phase')!r}; {METRIC} is phase 2's: name the agent run's config.json"
    )
  try:
    d = cfg["data"]
    window = int(d.get("long_window") or 0) or int(d["window"])  # the trainer's eval window
    return MetricSettings(
      window=window,
      batch_size=int(cfg["train"]["batch_size"]),
      num_batches=int(cfg["eval"]["num_batches"]),
      eval_fraction=float(d["eval_fraction"]),
      split_seed=int(d["split_seed"]),
      variant=str(cfg.get("variant") or ""),
    )
  except (KeyError, TypeError, ValueError) as e:
    raise UserError(f"{path}: phase-2 config without a usable {e}; name the agent run's config.json") from None


def toy_spec(store, flag: str):
  """The registry entry of the store's env; UserError unless it is collected one episode at a time
  by a behaviour policy over an env with a greedy action (the toy world)."""
  env = str(store.metadata.get("env", ""))
  spec = ENVS.get(env)
  greedy = getattr(spec.make, "greedy_action", None) if spec is not None else None  # make: the env class
  if spec is None or spec.behaviour is None or not callable(greedy):
    raise UserError(
      f"{flag}: the dataset {store.path} is of env {env!r}, not a toy-world store; the ceiling replays the "
      "toy world's scripted collection (data_pipelines/envs/toy.py)"
    )
  return spec


def collection_settings(
  store,
  variant: str,
  *,
  seed: int | None = None,
  skills: Sequence[float] | None = None,
  layout: str | None = None,
  max_steps: int | None = None,
) -> dict[str, Any]:
  """Seed, skills, layout, episode cap and frame size of the store's collection, with their sources:
  a flag, the store's metadata (frame size) or configs/pipeline.py's defaults for `variant` (the
  workdir records no other collection setting)."""
  from configs import pipeline as pipeline_config  # pylint: disable=g-import-not-at-top

  name = variant if variant in pipeline_config.VARIANTS else "toy"
  default = pipeline_config.get_config(name).collect
  why = "" if name == variant else f" (the agent config's variant {variant!r} is none of configs/pipeline.py's)"
  from_config = f"configs/pipeline.py:{name} default, not recorded in the workdir{why}"
  sources = {}

  def pick(key, flag_value, config_value):
    sources[key] = "flag" if flag_value is not None else from_config
    return config_value if flag_value is None else flag_value

  seed = int(pick("seed", seed, default.seed))
  skills = tuple(float(s) for s in pick("skills", skills, str(default.skills).split(",")))
  layout = str(pick("layout", layout, default.layout)) or None
  max_steps = int(pick("max_steps", max_steps, default.max_steps))
  sources["size"] = "store metadata (frame_shape)"
  if not skills or any(not 0.0 <= s <= 1.0 for s in skills):
    raise UserError(f"--skills={','.join(map(str, skills))}: give comma-separated values in [0, 1]")
  return {
    "seed": seed,
    "skills": list(skills),
    "layout": layout,
    "max_steps": max_steps,
    "size": int(store.frame_shape[0]),
    "sources": sources,
  }


# ---------------------------------------------------------------------------------- the replay


@dataclasses.dataclass
class Replay:
  """The replayed collection, per frame of the store: the greedy action in the state before it
  (-1 on first frames), whether the policy took its greedy branch, and each episode's skill."""

  greedy_N: np.ndarray
  drew_N: np.ndarray
  skill_E: np.ndarray
  mismatches: dict[str, int]
  first_mismatch: int | None


class _GreedySpy:
  """The env as the policy sees it, noting whether the policy asked for the greedy action."""

  def __init__(self, env):
    self._env = env
    self.asked = False

  def greedy_action(self):
    self.asked = True
    return self._env.greedy_action()

  def __getattr__(self, name):
    return getattr(self._env, name)


class _Recorder:
  """A behaviour policy that records, before each step, the greedy action and its branch."""

  def __init__(self, policy, skill: float):
    self._policy = policy
    self.skill = float(skill)
    self.greedy: list[int] = []
    self.drew: list[bool] = []

  def __call__(self, env):
    self.greedy.append(int(env.greedy_action()))
    spy = _GreedySpy(env)
    action = self._policy(spy)
    self.drew.append(spy.asked)
    return action


class _Frames:
  """Sequential reads of the store's frames in blocks of FRAME_BLOCK."""

  def __init__(self, store):
    self._store, self._lo, self._hi, self._buf = store, 0, 0, None

  def get(self, begin: int, end: int) -> np.ndarray:
    if not (self._lo <= begin and end <= self._hi):
      self._lo, self._hi = begin, min(max(end, begin + FRAME_BLOCK), self._store.num_frames)
      self._buf = self._store.read("frames", self._lo, self._hi)
    return self._buf[begin - self._lo : end - self._lo]


def replay(store, spec, settings: dict[str, Any]) -> Replay:
  """Plays every episode of the store again with the collection `settings` and checks it against
  the store (see the module docstring)."""
  try:
    env = spec.make(**spec.env_kwargs(settings["size"], settings["max_steps"], settings["layout"]))
  except ValueError as e:  # e.g. an unknown layout or a cap below 1
    raise UserError(f"the collection settings cannot build the env: {e}; fix --layout or --max_steps") from None
  N, E = store.num_frames, store.num_episodes
  offsets = store.episode_offsets
  stored = store.read_many(["actions_discrete", "tasks", "rewards"], 0, N)
  frames = _Frames(store)
  greedy_N, drew_N, skill_E = np.full(N, -1, np.int64), np.zeros(N, bool), np.zeros(E, np.float64)
  mismatches = {"actions": 0, "frames": 0, "tasks_rewards": 0}
  recorders: list[_Recorder] = []  # one per episode, in order
  first: list[int] = []
  done = 0  # episodes checked

  def behaviour(skill, seed):
    recorders.append(_Recorder(spec.behaviour(skill, seed), skill))
    return recorders[-1]

  def sink(batch):
    nonlocal done
    for ep in batch:
      e, done = done, done + 1
      rec, begin, end = recorders[e], int(offsets[e]), int(offsets[e + 1])
      skill_E[e] = rec.skill
      acts = ep["actions_discrete_TA"]
      if acts.shape != stored["actions_discrete"][begin:end].shape or not np.array_equal(
        acts, stored["actions_discrete"][begin:end]
      ):
        mismatches["actions"] += 1
        first.append(e)
        continue
      greedy_N[begin + 1 : end], drew_N[begin + 1 : end] = rec.greedy, rec.drew
      if not np.array_equal(ep["frames_THWC"], frames.get(begin, end)):
        mismatches["frames"] += 1
        first.append(e)
      if not (
        np.array_equal(ep["tasks_T"], stored["tasks"][begin:end])
        and np.array_equal(ep["rewards_T"], stored["rewards"][begin:end])
      ):
        mismatches["tasks_rewards"] += 1
        first.append(e)

  seeds = lambda k: _episode_seeds(settings["seed"], k)
  _play_episodes(env, behaviour, seeds, tuple(settings["skills"]), E, sink)
  return Replay(greedy_N, drew_N, skill_E, mismatches, min(first) if first else None)


# ---------------------------------------------------------------------------------- the labels


@dataclasses.dataclass
class Labels:
  """The metric's labels, flat: batch, episode and global frame of each, its action and the
  window's action on the frame before."""

  batch_L: np.ndarray
  episode_L: np.ndarray
  frame_L: np.ndarray
  action_L: np.ndarray
  previous_L: np.ndarray
  num_batches: int
  window_episodes: list[int]  # the episode of every relevant window


def metric_labels(store, data_path: str, ms: MetricSettings, eval_ids, relevant_eval) -> tuple[Labels, dict]:
  """(labels, counts) of `METRIC` on the store (module docstring)."""
  from dreamer4.phases.agent import AgentPhase  # pylint: disable=g-import-not-at-top

  pad = AgentPhase.window_pad
  batches = data_loader.eval_batches(
    data_path,
    window=ms.window,
    batch_size=ms.batch_size,
    episode_ids=eval_ids,
    max_batches=ms.num_batches,
    fields=FIELDS,
    pad=pad,
  )
  starts_W = window_table(store.episode_offsets, eval_ids, ms.window, pad)[0]
  t = np.arange(1, ms.window)
  cols: dict[str, list] = {k: [] for k in ("batch", "episode", "frame", "action", "previous")}
  window_episodes = []
  for b, batch in enumerate(batches):
    relevant_B = np.isin(batch["episode"], relevant_eval)  # MixtureStreams.label_eval
    valid_BT = batch["action_labelled"][:, 1:].astype(bool) & batch["valid_T"][:, 1:] & relevant_B[:, None]
    frame_BT = starts_W[batch["index"]][:, None] + t[None, :]
    a_BT = batch["actions_discrete"][..., 0]
    cols["batch"].append(np.full(int(valid_BT.sum()), b))
    cols["episode"].append(np.broadcast_to(batch["episode"][:, None], valid_BT.shape)[valid_BT])
    cols["frame"].append(frame_BT[valid_BT])
    cols["action"].append(a_BT[:, 1:][valid_BT])
    cols["previous"].append(a_BT[:, :-1][valid_BT])
    window_episodes += [int(e) for e in batch["episode"][relevant_B]]
  flat = {k: np.concatenate(v).astype(np.int64) for k, v in cols.items()}
  labels = Labels(
    flat["batch"], flat["episode"], flat["frame"], flat["action"], flat["previous"], len(batches), window_episodes
  )
  counts = {
    "window": ms.window,
    "batch_size": ms.batch_size,
    "batches": len(batches),
    "windows": len(batches) * ms.batch_size,
    "windows_available": int(len(starts_W)),
    "relevant_windows": len(window_episodes),
    "relevant_window_episodes": len(set(window_episodes)),
    "labels": int(len(flat["action"])),
  }
  return labels, counts


def _metric_mean(hit_L: np.ndarray, batch_L: np.ndarray, num_batches: int) -> float | None:
  """The metric's averaging: the mean over batches of each batch's hits / labels (the trainer's
  MeanMetrics, a batch without labels (NaN) left out)."""
  from dreamer4.training.metrics import MeanMetrics  # pylint: disable=g-import-not-at-top

  acc = MeanMetrics()
  for b in range(num_batches):
    sel = batch_L == b
    acc.update({"accuracy": np.float32(hit_L[sel].mean()) if sel.any() else np.float32(np.nan)}, skip_nan=True)
  return acc.compute_and_reset().get("accuracy")


def _share(hit, sel) -> float | None:
  n = int(np.sum(sel))
  return float(np.sum(hit[sel]) / n) if n else None


def _skill_key(skill: float) -> str:
  return str(float(skill))


# ---------------------------------------------------------------------------------- the ceiling


def bc_ceiling(
  workdir: str | None = None,
  *,
  data: str | None = None,
  agent_config: str | None = None,
  seed: int | None = None,
  skills: Sequence[float] | None = None,
  layout: str | None = None,
  max_steps: int | None = None,
) -> dict[str, Any]:
  """The report (module docstring); UserError on bad input, or when the replay does not reproduce
  the store."""
  inputs = locate(workdir, data, agent_config)
  flag = f"--workdir={workdir}" if workdir else f"--data={inputs.data}"
  ms = metric_settings(inputs.agent_config)
  store = EpisodeStore.open(inputs.data, "r")
  spec = toy_spec(store, flag)
  settings = collection_settings(store, ms.variant, seed=seed, skills=skills, layout=layout, max_steps=max_steps)
  rep = replay(store, spec, settings)
  if rep.first_mismatch is not None:
    m = rep.mismatches
    raise UserError(
      f"{flag}: replaying the collection (seed {settings['seed']}, skills {settings['skills']}, layout "
      f"{settings['layout']}, max_steps {settings['max_steps']}) does not reproduce the store {inputs.data}: "
      f"of {store.num_episodes} episodes, {m['actions']} differ in actions, {m['frames']} in frames, "
      f"{m['tasks_rewards']} in tasks or rewards (first: episode {rep.first_mismatch}); give the collection's "
      "settings with --seed, --skills, --layout, --max_steps"
    )

  train_ids, eval_ids = store.split(ms.eval_fraction, seed=ms.split_seed)
  relevant_train = data_loader.relevant_episode_ids(store, train_ids)
  relevant_eval = data_loader.relevant_episode_ids(store, eval_ids)
  labels, counts = metric_labels(store, inputs.data, ms, eval_ids, relevant_eval)
  comp = store.action_spec.components[0]
  num_actions = int(comp.size)
  names = [comp.labels[i] if i < len(comp.labels) else str(i) for i in range(num_actions)]

  # Every labelled frame (not an episode's first) of a set of episodes, as a mask over the store.
  N, offsets = store.num_frames, store.episode_offsets
  labelled_N = store.read("action_labelled", 0, N).astype(bool)
  actions_N = store.read("actions_discrete", 0, N)[:, 0].astype(np.int64)
  episode_N = np.repeat(np.arange(store.num_episodes), np.diff(offsets))

  def frames_of(ids) -> np.ndarray:
    return labelled_N & np.isin(episode_N, np.asarray(ids, np.int64)) & (rep.greedy_N >= 0)

  train_counts = np.bincount(actions_N[frames_of(relevant_train)], minlength=num_actions)
  mode = int(np.argmax(train_counts))
  skill_L = rep.skill_E[labels.episode_L]
  greedy_L = rep.greedy_N[labels.frame_L]
  preds = {
    "most_frequent": np.full(len(labels.action_L), mode),
    "repeat_previous": labels.previous_L,
    "oracle_greedy": greedy_L,
  }
  skill_values = list(dict.fromkeys(settings["skills"]))
  predictors = {}
  for name, pred in preds.items():
    hit = pred == labels.action_L
    predictors[name] = {
      "accuracy": _metric_mean(hit, labels.batch_L, labels.num_batches),
      "pooled": _share(hit, np.ones(len(hit), bool)),
      "hits": int(hit.sum()),
      "per_skill": {_skill_key(s): _share(hit, skill_L == s) for s in skill_values},
    }
  predictors["most_frequent"]["action"] = names[mode]

  drew_L = rep.drew_N[labels.frame_L]
  win_skill = rep.skill_E[np.asarray(labels.window_episodes, np.int64)]
  per_skill = {}
  for s in skill_values:
    sel = skill_L == s
    per_skill[_skill_key(s)] = {
      "windows": int(np.sum(win_skill == s)),
      "labels": int(sel.sum()),
      "label_equals_greedy": _share(greedy_L == labels.action_L, sel),
      "greedy_draws": _share(drew_L, sel),
      "nominal": s + (1.0 - s) / num_actions,
    }

  hit_N = rep.greedy_N == actions_N
  skill_N = rep.skill_E[episode_N]
  population = {}
  for pop, ids in zip(POPULATIONS, (range(store.num_episodes), relevant_train, relevant_eval)):
    sel = frames_of(ids)
    population[pop] = {
      "episodes": len(ids),
      "labels": int(sel.sum()),
      "label_equals_greedy": _share(hit_N, sel),
      "per_skill": {
        _skill_key(s): {
          "labels": int(np.sum(sel & (skill_N == s))),
          "label_equals_greedy": _share(hit_N, sel & (skill_N == s)),
          "greedy_draws": _share(rep.drew_N, sel & (skill_N == s)),
        }
        for s in skill_values
      },
    }

  counts.update(
    held_out_episodes=int(len(eval_ids)),
    relevant_held_out_episodes=len(relevant_eval),
    eval_fraction=ms.eval_fraction,
    split_seed=ms.split_seed,
  )
  return {
    "workdir": workdir,
    "data": inputs.data,
    "agent_config": inputs.agent_config,
    "env": str(store.metadata["env"]),
    "metric": METRIC,
    "run_metric": _run_metric(inputs.agent_config),
    "collection": settings,
    "replay": {"episodes": store.num_episodes, "frames": N, "mismatches": rep.mismatches},
    "labels": dict(
      counts,
      actions=names,
      distribution=np.bincount(labels.action_L, minlength=num_actions).tolist(),
      train_relevant_distribution=train_counts.tolist(),
    ),
    "predictors": predictors,
    "per_skill": per_skill,
    "population": population,
  }


def _run_metric(agent_config: str) -> float | None:
  """The phase-2 run's last logged value of METRIC (its run_summary.json beside the config), if any."""
  path = os.path.join(os.path.dirname(os.path.abspath(agent_config)), "run_summary.json")
  try:
    with open(path) as f:
      value = json.load(f).get("eval", {}).get(METRIC)
  except (OSError, ValueError, AttributeError):
    return None
  return float(value) if isinstance(value, (int, float)) else None


# ---------------------------------------------------------------------------------- output


def _pct(value) -> str:
  return "-" if value is None else f"{100 * value:5.1f}%"


def format_report(report: dict[str, Any]) -> str:
  """The report as a readable table."""
  lab, col, rep = report["labels"], report["collection"], report["replay"]
  skills = list(report["per_skill"])
  lines = [
    f"bc ceiling of {report['metric']} on {report['data']} ({report['env']})",
    f"collection: seed {col['seed']}, skills {','.join(skills)}, layout {col['layout']}, max_steps "
    f"{col['max_steps']}, size {col['size']}; replay of {rep['episodes']} episodes: mismatches "
    + ", ".join(f"{k} {v}" for k, v in rep["mismatches"].items()),
    f"labels: {lab['labels']} in {lab['relevant_windows']} relevant windows ({lab['relevant_window_episodes']} "
    f"episodes) of {lab['windows']} ({lab['batches']}x{lab['batch_size']} of {lab['window']} frames; "
    f"{lab['windows_available']} held-out windows, {lab['relevant_held_out_episodes']} of "
    f"{lab['held_out_episodes']} held-out episodes relevant)",
    "",
  ]
  rows = {name + (f" ({p['action']})" if "action" in p else ""): p for name, p in report["predictors"].items()}
  width = max(len(name) for name in rows)
  lines.append(f"  {'predictor':{width}s}  {'metric':>6s}  {'pooled':>6s}  pooled per skill")
  for name, p in rows.items():
    per = "  ".join(f"{s} {_pct(p['per_skill'][s]).strip()}" for s in skills)
    lines.append(f"  {name:{width}s}  {_pct(p['accuracy'])}  {_pct(p['pooled'])}  {per}")
  if report["run_metric"] is not None:
    lines.append(f"  {'phase-2 run':{width}s}  {_pct(report['run_metric'])}  (its last logged {report['metric']})")
  lines += ["", "  per skill   labels  windows  label=greedy  greedy draws  nominal"]
  for s, row in report["per_skill"].items():
    lines.append(
      f"  {s:9s} {row['labels']:8d} {row['windows']:8d}  {_pct(row['label_equals_greedy']):>12s}  "
      f"{_pct(row['greedy_draws']):>12s}  {_pct(row['nominal']):>7s}"
    )
  lines += ["", "  label=greedy over every labelled frame of:"]
  for name, pop in report["population"].items():
    per = ", ".join(f"{s}: {_pct(r['label_equals_greedy'])} of {r['labels']}" for s, r in pop["per_skill"].items())
    lines.append(f"  {name:18s} {_pct(pop['label_equals_greedy'])} of {pop['labels']} ({per})")
  return "\n".join(lines)


def write_json(report: dict[str, Any], path: str) -> None:
  """Writes `report` to `path` atomically (dreamer4/evaluation/tool_io.py)."""
  tool_io.write_json(report, path, ".bc_ceiling-")


def _skills_flag(value: str) -> tuple[float, ...]:
  try:
    return tuple(float(s) for s in value.split(","))
  except ValueError:
    raise argparse.ArgumentTypeError(f"give comma-separated numbers in [0, 1], got {value!r}") from None


def main(argv: Sequence[str] | None = None) -> int:
  """The command line (module docstring); returns the exit code."""
  ap = argparse.ArgumentParser(prog="python -m dreamer4.evaluation.bc_ceiling", description=__doc__.split("\n\n")[0])
  ap.add_argument("--workdir", default=None, help="pipeline workdir (data/, agent/config.json)")
  ap.add_argument("--data", default=None, help="the store (default WORKDIR/data, else the agent config's data.path)")
  ap.add_argument("--agent_config", default=None, help="phase-2 config.json (default WORKDIR/agent/config.json)")
  ap.add_argument("--seed", type=int, default=None, help="collection seed (default: configs/pipeline.py's)")
  ap.add_argument("--skills", type=_skills_flag, default=None, help="collection skills, e.g. 0.9,0.6,0.3,0.0")
  ap.add_argument("--layout", default=None, help="toy goal layout: fixed or random")
  ap.add_argument("--max_steps", type=int, default=None, help="the collection's episode cap")
  ap.add_argument("--out", default=None, help="the JSON report (default WORKDIR/bc_ceiling.json)")
  args = ap.parse_args(argv)

  def compute():
    inputs = locate(args.workdir, args.data, args.agent_config)  # a missing run is named before the --out check
    if not args.out and not args.workdir:
      raise UserError("--out is required without --workdir: name the JSON report's file")
    out = args.out or os.path.join(args.workdir, "bc_ceiling.json")
    tool_io.check_out_folder(out)
    report = bc_ceiling(
      args.workdir,
      data=inputs.data,
      agent_config=inputs.agent_config,
      seed=args.seed,
      skills=args.skills,
      layout=args.layout,
      max_steps=args.max_steps,
    )
    return report, out

  return tool_io.run_tool(compute, format_report, ".bc_ceiling-")


if __name__ == "__main__":
  sys.exit(main())
