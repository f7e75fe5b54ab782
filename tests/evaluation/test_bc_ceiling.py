"""dreamer4/evaluation/bc_ceiling.py on small toy stores collected by the library's own collection
(configs/pipeline.py's collect stage, data_pipelines.collect.collect), each with a phase-2 config
written as the trainer writes it."""

import contextlib
import io
import json
import math
import os
import shutil

import numpy as np
import pytest

from configs import agent as agent_config
from configs import pipeline as pipeline_config
from data_pipelines.collect import collect
from data_pipelines.episodes import EpisodeStore
from dreamer4.evaluation import bc_ceiling
from dreamer4.pipeline import run_pipeline
from dreamer4.training.trainer import write_config

WINDOW, BATCH, NUM_BATCHES, EVAL_FRACTION = 8, 8, 3, 0.5  # 24 held-out windows of 8 frames
NUM_ACTIONS = 5  # toy: noop, up, down, left, right


def _agent_config(run: str) -> None:
  """RUN/agent/config.json: the tiny phase-2 config on RUN/data with this file's metric settings."""
  cfg = agent_config.get_config("tiny")
  cfg.data.path = os.path.join(run, "data")
  cfg.data.window = WINDOW
  cfg.data.eval_fraction = EVAL_FRACTION
  cfg.train.batch_size = BATCH
  cfg.eval.num_batches = NUM_BATCHES
  write_config(os.path.join(run, "agent"), cfg)


def _run_main(argv) -> tuple[int, str]:
  buf = io.StringIO()
  with contextlib.redirect_stdout(buf):
    code = bc_ceiling.main(argv)
  return code, buf.getvalue()


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory):
  """(run, report): the pipeline's own collect stage (configs/pipeline.py:tiny, 40 episodes) and
  the ceiling through the command line, every collection setting from the pipeline's defaults."""
  run = str(tmp_path_factory.mktemp("bc_ceiling") / "pipeline")
  cfg = pipeline_config.get_config("tiny")
  cfg.stages = ("collect",)
  cfg.collect.episodes = 40
  run_pipeline(cfg, run)
  _agent_config(run)
  out = os.path.join(run, "report.json")
  code, stdout = _run_main([f"--workdir={run}", f"--out={out}"])
  assert code == 0
  assert "oracle_greedy" in stdout and f"written: {out}" in stdout
  with open(out) as f:
    return run, json.load(f)


def _collected_run(root, name: str, skills, episodes: int, seed: int):
  """(run, report): `episodes` toy episodes (16 px, fixed goals) at `skills`, and the ceiling
  with those collection settings given as arguments."""
  run = str(root / name)
  collect("toy", os.path.join(run, "data"), episodes, seed=seed, skills=skills, size=16, layout="fixed")
  _agent_config(run)
  return run, bc_ceiling.bc_ceiling(run, seed=seed, skills=skills, layout="fixed")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """{"mixed", "expert", "random"}: (run, report) of stores of skills (0.9, 0.6, 0.3, 0.0), (1.0,) and (0.0,)."""
  root = tmp_path_factory.mktemp("bc_ceiling_runs")
  return {
    "mixed": _collected_run(root, "mixed", (0.9, 0.6, 0.3, 0.0), 40, seed=3),
    "expert": _collected_run(root, "expert", (1.0,), 30, seed=1),
    "random": _collected_run(root, "random", (0.0,), 80, seed=2),
  }


# ---------------------------------------------------------------------------------- (a) the replay


def test_replay_reproduces_every_stored_episode(pipeline_run, runs):
  for run, report in [pipeline_run] + list(runs.values()):
    store = EpisodeStore.open(os.path.join(run, "data"))
    assert report["replay"] == {
      "episodes": store.num_episodes,
      "frames": store.num_frames,
      "mismatches": {"actions": 0, "frames": 0, "tasks_rewards": 0},
    }
  # The pipeline run's settings came from configs/pipeline.py:tiny, the others' from arguments.
  col = pipeline_run[1]["collection"]
  tiny = pipeline_config.get_config("tiny").collect
  assert (col["seed"], col["layout"], col["max_steps"], col["size"]) == (0, "random", 64, 16)
  assert col["skills"] == [float(s) for s in tiny.skills.split(",")]
  assert col["sources"]["skills"].startswith("configs/pipeline.py:tiny default")
  assert col["sources"]["size"] == "store metadata (frame_shape)"
  assert runs["mixed"][1]["collection"]["sources"]["skills"] == "flag"


# ---------------------------------------------------------------------------------- (b) the oracle


def test_oracle_is_exact_when_every_action_is_greedy(runs):
  report = runs["expert"][1]
  labels = report["labels"]["labels"]
  assert labels > 0
  oracle = report["predictors"]["oracle_greedy"]
  assert oracle["hits"] == labels  # every label
  assert oracle["accuracy"] == 1.0 and oracle["pooled"] == 1.0
  assert oracle["per_skill"] == {"1.0": 1.0}
  row = report["per_skill"]["1.0"]
  assert (row["labels"], row["label_equals_greedy"], row["greedy_draws"], row["nominal"]) == (labels, 1.0, 1.0, 1.0)
  for pop in report["population"].values():
    assert pop["label_equals_greedy"] == 1.0


def test_random_play_matches_greedy_at_chance(runs):
  report = runs["random"][1]
  pop = report["population"]["all_episodes"]["per_skill"]["0.0"]
  n, share = pop["labels"], pop["label_equals_greedy"]
  # A skill-0 action is uniform and independent of everything before it, so hits - n / A is a
  # martingale over the steps: the share is 1/A up to binomial noise, here within 4 standard
  # deviations (two-sided: 6e-5 for a fresh seed; the seed is fixed, so the test is deterministic).
  p = 1.0 / NUM_ACTIONS
  bound = 4.0 * math.sqrt(p * (1.0 - p) / n)
  assert n > 3000 and bound < 0.03
  assert abs(share - p) <= bound, (share, bound)
  assert pop["greedy_draws"] == 0.0
  assert report["per_skill"]["0.0"]["greedy_draws"] == 0.0
  assert report["per_skill"]["0.0"]["nominal"] == pytest.approx(p)


# ---------------------------------------------------------------------------------- (c) trivial predictors


def _independent(run):
  """Independently of the tool: the metric's labels (batch, frame) from the phase-2 config, and
  the training split's relevant labelled frames. One window starts at every frame of a held-out
  episode (padded past its end); batch b holds windows b * B .. (b + 1) * B - 1 of
  min(num_batches, ceil(n / B)) * B picks i * n // count; the labels are frames 1 .. T-1 of each
  window of an episode with a positive return, while inside the episode."""
  with open(os.path.join(run, "agent", "config.json")) as f:
    cfg = json.load(f)
  T, B, nb = cfg["data"]["window"], cfg["train"]["batch_size"], cfg["eval"]["num_batches"]
  store = EpisodeStore.open(os.path.join(run, "data"))
  offsets = store.episode_offsets
  _, held = store.split(cfg["data"]["eval_fraction"], seed=cfg["data"]["split_seed"])
  rewards = store.read("rewards", 0, store.num_frames)
  success = [rewards[offsets[e] : offsets[e + 1]].sum() > 0 for e in range(store.num_episodes)]
  starts = [(f, e) for e in held for f in range(offsets[e], offsets[e + 1])]
  n = len(starts)
  count = min(nb, -(-n // B)) * B
  labels = []
  for j in range(count):
    f0, e = starts[j * n // count]
    if success[e]:
      labels += [(j // B, f0 + t) for t in range(1, T) if f0 + t < offsets[e + 1]]
  held_set = set(held.tolist())
  train_relevant = [
    f
    for e in range(store.num_episodes)
    if e not in held_set and success[e]
    for f in range(offsets[e] + 1, offsets[e + 1])
  ]
  return store, np.asarray(labels), np.asarray(train_relevant), count // B


def _metric(batch, hit, num_batches):
  return np.mean([hit[batch == b].mean() for b in range(num_batches) if np.any(batch == b)])


@pytest.mark.parametrize("which", ["pipeline", "mixed"])
def test_trivial_predictors_match_independent_counts(which, pipeline_run, runs):
  run, report = pipeline_run if which == "pipeline" else runs[which]
  store, labels, train_relevant, num_batches = _independent(run)
  assert len(labels) > 20
  batch, frame = labels[:, 0], labels[:, 1]
  actions = store.read("actions_discrete", 0, store.num_frames)[:, 0]
  y = actions[frame]
  lab = report["labels"]
  assert lab["labels"] == len(labels) and lab["batches"] == num_batches
  assert lab["distribution"] == np.bincount(y, minlength=NUM_ACTIONS).tolist()

  train_counts = np.bincount(actions[train_relevant], minlength=NUM_ACTIONS)
  assert lab["train_relevant_distribution"] == train_counts.tolist()
  mode = int(np.argmax(train_counts))
  predictions = {"most_frequent": np.full(len(y), mode), "repeat_previous": actions[frame - 1]}
  for name, pred in predictions.items():
    hit = (pred == y).astype(np.float64)
    got = report["predictors"][name]
    assert got["hits"] == int(hit.sum()), name
    assert got["pooled"] == pytest.approx(hit.mean(), abs=1e-12), name
    assert got["accuracy"] == pytest.approx(_metric(batch, hit, num_batches), abs=1e-6), name
  assert report["predictors"]["most_frequent"]["action"] == report["labels"]["actions"][mode]
  # The per-skill counts cover every label once.
  assert sum(row["labels"] for row in report["per_skill"].values()) == len(labels)


# ---------------------------------------------------------------------------------- (d) bad input


def _run_bad(tmp_path, capsys, argv, also_unchanged=()):
  out = tmp_path / "out" / "ceiling.json"
  out.parent.mkdir(exist_ok=True)
  trees = [tmp_path] + [type(tmp_path)(p) for p in also_unchanged]
  listing = lambda: [sorted(p.relative_to(t) for p in t.rglob("*")) for t in trees]
  before = listing()
  code = bc_ceiling.main(list(argv) + [f"--out={out}"])
  err = capsys.readouterr().err.strip()
  assert code == 2
  assert len(err.splitlines()) == 1 and err.startswith("error: ")
  assert not out.exists() and listing() == before  # nothing written
  return err


def test_missing_workdir_is_one_line(tmp_path, capsys):
  missing = tmp_path / "no_run"
  err = _run_bad(tmp_path, capsys, [f"--workdir={missing}"])
  assert f"--workdir={missing} does not exist" in err and "configs/pipeline.py" in err


def test_missing_stages_are_one_line(tmp_path, capsys):
  run = tmp_path / "run"
  run.mkdir()
  err = _run_bad(tmp_path, capsys, [f"--workdir={run}"])
  assert "no phase-2 config" in err and str(run / "agent" / "config.json") in err
  _agent_config(str(run))
  err = _run_bad(tmp_path, capsys, [f"--workdir={run}"])
  assert "no dataset" in err and str(run / "data" / "metadata.json") in err


def test_a_store_of_another_env_is_refused(tmp_path, capsys, runs):
  run = tmp_path / "run"
  shutil.copytree(os.path.join(runs["mixed"][0], "data"), run / "data")
  _agent_config(str(run))
  meta = json.loads((run / "data" / "metadata.json").read_text())
  meta["env"] = "craftax"
  (run / "data" / "metadata.json").write_text(json.dumps(meta))
  err = _run_bad(tmp_path, capsys, [f"--workdir={run}"])
  assert "of env 'craftax', not a toy-world store" in err


def test_settings_that_do_not_replay_are_refused(tmp_path, capsys, runs):
  run = runs["expert"][0]
  err = _run_bad(tmp_path, capsys, [f"--workdir={run}", "--skills=0.0", "--layout=fixed"], also_unchanged=[run])
  assert "does not reproduce the store" in err and "--skills" in err
  # The pipeline defaults (configs/pipeline.py:tiny: random goals, skills 0.3,0.0) are not this store's.
  err = _run_bad(tmp_path, capsys, [f"--workdir={run}"], also_unchanged=[run])
  assert "does not reproduce the store" in err and "of 30 episodes, 30 differ in actions" in err
