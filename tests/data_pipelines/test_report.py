"""report: its numbers on a small toy store equal counts computed directly from the episodes."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from data_pipelines.collect import collect
from data_pipelines.episodes import EpisodeStore
from data_pipelines.report import compute_report, write_report

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def toy_store(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("report") / "toy")
  collect("toy", path, episodes=12, seed=1, skills=(1.0, 0.3, 0.0), size=16, max_steps=15)
  return path


def test_report_numbers_equal_direct_counts(toy_store):
  store = EpisodeStore.open(toy_store)
  episodes = [store.read_episode(e) for e in range(store.num_episodes)]
  report = compute_report(store)

  returns = np.array([ep["rewards"].sum() for ep in episodes])
  lengths = np.array([len(ep["rewards"]) for ep in episodes])
  assert report["episodes"] == 12 and report["frames"] == lengths.sum()
  assert report["labelled_frames"] == lengths.sum() - 12
  assert report["returns"]["mean"] == pytest.approx(returns.mean())
  assert report["returns"]["max"] == returns.max() and report["returns"]["min"] == returns.min()
  assert report["episode_length"]["mean"] == pytest.approx(lengths.mean())
  train, evals = store.split(0.1)
  assert report["split"] == {"train_episodes": len(train), "eval_episodes": len(evals), "eval_fraction": 0.1}

  for k, row in enumerate(report["tasks"]):
    mine = [ep for ep in episodes if ep["tasks"][0] == k]
    assert row["task"] == store.task_names[k] and row["episodes"] == len(mine)
    assert row["successes"] == sum(ep["rewards"].sum() > 0 for ep in mine)
    assert row["reward_events"] == sum(int((ep["rewards"] > 0).sum()) for ep in mine)
  assert sum(row["episodes"] for row in report["tasks"]) == 12
  assert report["achievements"] is None

  actions = np.concatenate([ep["actions_discrete"][1:, 0] for ep in episodes])
  hist, = report["actions"]
  assert list(hist["counts"]) == ["noop", "up", "down", "left", "right"]
  assert list(hist["counts"].values()) == np.bincount(actions, minlength=5).tolist()


def test_cli_writes_markdown_and_json(toy_store, tmp_path):
  out = tmp_path / "rep"
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  result = subprocess.run([sys.executable, "-m", "data_pipelines.report", toy_store, f"--out={out}"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr
  assert result.stdout.startswith("# Dataset report") and "| reach_red |" in result.stdout
  data = json.loads((out / "report.json").read_text())
  assert data == json.loads(json.dumps(compute_report(EpisodeStore.open(toy_store))))
  assert (out / "report.md").read_text() in result.stdout

  written = write_report(toy_store)  # default: next to the store
  assert all(os.path.exists(p) for p in written["written"])

  result = subprocess.run([sys.executable, "-m", "data_pipelines.report", str(tmp_path / "missing")], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=120)
  assert result.returncode == 2 and result.stderr.startswith("error: ")
