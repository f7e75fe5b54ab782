"""collect: in-process core and the command line (exit codes, one-line errors, no damage)."""

import os
import subprocess
import sys

import numpy as np
import pytest

from data_pipelines.collect import CollectError, collect
from data_pipelines.episodes import EpisodeStore

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(*args):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run(
    [sys.executable, "-m", "data_pipelines.collect", *args],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=120,
  )


def _snapshot(path):
  out = {}
  for root, _, files in os.walk(path):
    for name in files:
      p = os.path.join(root, name)
      out[p] = (os.stat(p).st_mtime_ns, open(p, "rb").read())
  return out


def test_collect_in_process(tmp_path):
  path = str(tmp_path / "s")
  summary = collect("toy", path, episodes=6, seed=0, skills=(1.0,), size=16, append=False, max_steps=20)
  assert summary["episodes"] == 6 and summary["success_rate"] == 1.0 and summary["mean_return"] == 1.0
  store = EpisodeStore.open(path)
  assert store.num_episodes == 6 and store.num_frames == summary["frames"]
  ep = store.read_episode(0)
  assert ep["rewards"][-1] == 1.0 and ep["rewards"][:-1].sum() == 0
  assert not ep["action_labelled"][0] and ep["action_labelled"][1:].all()
  assert ep["actions_discrete"][0, 0] == 0 and (ep["tasks"] == ep["tasks"][0]).all()
  more = collect("toy", path, episodes=2, seed=0, skills=(0.0,), size=16, append=True, max_steps=20)
  assert more["total_episodes"] == 8
  appended = EpisodeStore.open(path).read_episode(6)["frames"]
  assert not np.array_equal(appended[0], ep["frames"][0])  # appended episodes use fresh seeds
  with pytest.raises(CollectError, match="--append: .* holds env 'toy' with frames"):
    collect("toy", path, episodes=1, seed=0, skills=(0.5,), size=32, append=True)


def test_collect_fixed_layout(tmp_path):
  from data_pipelines.envs.toy import FIXED_GOALS, KIND_COLOURS

  path = str(tmp_path / "s")
  collect("toy", path, episodes=5, seed=3, skills=(0.5,), size=16, max_steps=20, layout="fixed")
  store = EpisodeStore.open(path)
  for i in range(store.num_episodes):
    first = store.read_episode(i)["frames"][0]  # 2-px cells; the agent never starts on a goal
    for (y, x), colour in zip(FIXED_GOALS, KIND_COLOURS):
      np.testing.assert_array_equal(first[2 * y, 2 * x], colour)


def test_cli_writes_requested_episodes(tmp_path):
  path = str(tmp_path / "s")
  result = _run("--env=toy", "--episodes=3", f"--output={path}", "--size=16", "--skills=1.0,0.0", "--max_steps=12")
  assert result.returncode == 0, result.stderr
  assert result.stdout.startswith("collected 3 episodes")
  assert EpisodeStore.open(path).num_episodes == 3


def test_cli_errors(tmp_path):
  missing = tmp_path / "never"
  result = _run("--env=pong9000", "--episodes=2", f"--output={missing}")
  assert result.returncode == 2
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: --env: unknown env 'pong9000'")
  assert not missing.exists()

  result = _run("--episodes=0", f"--output={missing}")
  assert result.returncode == 2 and result.stderr.startswith("error: --episodes") and not missing.exists()

  result = _run("--episodes=2", f"--output={missing}", "--layout=spiral")
  assert result.returncode == 2 and result.stderr.strip().count("\n") == 0
  assert (
    result.stderr.startswith("error: --layout: ToyWorld: layout must be one of random, fixed") and not missing.exists()
  )
  with pytest.raises(CollectError, match="--layout: only the toy env has layouts"):
    collect("craftax", str(missing), episodes=2, layout="fixed")
  assert not missing.exists()
  with pytest.raises(CollectError, match="--goals: only the craftax env has goals; drop --goals for --env=toy"):
    collect("toy", str(missing), episodes=2, goals=("collect_wood",))
  with pytest.raises(CollectError, match="--goals: unknown goal 'fly' for --env=craftax; choose among collect_wood,"):
    collect("craftax", str(missing), episodes=2, goals=("collect_wood", "fly"))
  result = _run("--env=toy", "--episodes=2", f"--output={missing}", "--goals=collect_wood")
  assert result.returncode == 2 and result.stderr.strip().count("\n") == 0
  assert result.stderr.startswith("error: --goals: only the craftax env has goals") and not missing.exists()

  path = str(tmp_path / "s")
  collect("toy", path, episodes=2, seed=0, skills=(1.0,), size=16, append=False, max_steps=10)
  before = _snapshot(path)
  result = _run("--episodes=2", f"--output={path}", "--size=16")
  assert result.returncode == 2
  assert result.stderr.strip().count("\n") == 0 and "already exist" in result.stderr and "--append" in result.stderr
  assert _snapshot(path) == before
