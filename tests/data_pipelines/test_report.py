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
  (hist,) = report["actions"]
  assert list(hist["counts"]) == ["noop", "up", "down", "left", "right"]
  assert list(hist["counts"].values()) == np.bincount(actions, minlength=5).tolist()


def test_cli_writes_markdown_and_json(toy_store, tmp_path):
  out = tmp_path / "rep"
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  result = subprocess.run(
    [sys.executable, "-m", "data_pipelines.report", toy_store, f"--out={out}"],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert result.returncode == 0, result.stderr
  assert result.stdout.startswith("# Dataset report") and "| reach_red |" in result.stdout
  data = json.loads((out / "report.json").read_text())
  assert data == json.loads(json.dumps(compute_report(EpisodeStore.open(toy_store))))
  assert (out / "report.md").read_text() in result.stdout

  written = write_report(toy_store)  # default: next to the store
  assert all(os.path.exists(p) for p in written["written"])

  result = subprocess.run(
    [sys.executable, "-m", "data_pipelines.report", str(tmp_path / "missing")],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert result.returncode == 2 and result.stderr.startswith("error: ")


def test_success_is_the_task_achievement_not_any_reward(tmp_path):
  """Where tasks are achievements, an episode that unlocked another achievement is not a success,
  and the phase-2 mixture does not count it as task-relevant (craftax pays +1 per achievement)."""
  from data_pipelines import loader
  from data_pipelines.envs.base import ActionComponent, ActionSpec
  from data_pipelines.report import UNLOCKS, episode_success

  names = ["collect_wood", "place_table", "eat_cow"]
  store = EpisodeStore.create(
    str(tmp_path / "s"),
    env="craftax",
    frame_shape=(8, 8, 3),
    action_spec=ActionSpec((ActionComponent("action", "discrete", 3),)),
    task_names=["collect_wood", "place_table", "reach_far"],
    fps=10,
  )
  store.add_array(UNLOCKS, (3,), np.uint8, attrs={"names": names})
  T = 4

  def episode(task, unlock_step_k):  # unlock_step_k: {achievement index: step}
    unlocks = np.zeros((T, 3), np.uint8)
    for k, t in unlock_step_k.items():
      unlocks[t, k] = 1
    return dict(
      frames_THWC=np.zeros((T, 8, 8, 3), np.uint8),
      actions_discrete_TA=np.zeros((T, 1), np.int32),
      rewards_T=unlocks.sum(-1).astype(np.float32),
      tasks_T=np.full((T,), task, np.int32),
      action_labelled_T=np.arange(T) > 0,
      extra={UNLOCKS: unlocks},
    )

  store.append_many(
    [
      episode(0, {0: 2}),  # task collect_wood, unlocked it: success
      episode(1, {0: 1}),  # task place_table, unlocked only collect_wood: return 1, no success
      episode(1, {0: 1, 1: 3}),  # task place_table, unlocked it: success
      episode(2, {2: 1}),  # task not an achievement: any reward counts
      episode(0, {}),  # nothing
    ]
  )
  success, task_E, returns, unlocked, ach = episode_success(store)
  assert success.tolist() == [True, False, True, True, False]
  assert returns.tolist() == [1.0, 1.0, 2.0, 1.0, 0.0] and task_E.tolist() == [0, 1, 1, 2, 0]
  assert unlocked[1].tolist() == [True, False, False] and ach == names
  assert loader.relevant_episode_ids(store, range(5)) == [0, 2, 3]

  # Hindsight task labels: every (episode, labelled task) where the episode accomplished the task.
  # Episodes start at global frames 0, 4, 8, 12, 16. collect_wood: episodes 0, 1, 2 at local steps
  # 2, 1, 1; place_table: episode 2 at step 3; reach_far (not an achievement): episode 3, its own
  # task, at its first reward (step 1).
  from data_pipelines.loader import task_demos
  from data_pipelines.windows import WindowSource

  d = task_demos(store, range(5))
  assert d.episode.tolist() == [0, 1, 2, 2, 3] and d.task.tolist() == [0, 0, 0, 1, 2]
  assert d.done_at.tolist() == [2, 5, 9, 11, 13]
  assert d.last_anchor.tolist() == [1, 4, 8, 10, 12]  # the frame before, not before the episode
  assert task_demos(store, range(5), until_success=False).last_anchor.tolist() == [3, 7, 11, 11, 15]
  assert task_demos(store, [1, 4]).episode.tolist() == [1]  # only the given episodes
  src = WindowSource(str(tmp_path / "s"), 2, d.episode, ("tasks", "rewards"), "end", None, d)
  records = [src[i] for i in range(len(src))]
  # windows anchored at 0..1, 4, 8, 8..10, 12: each carries its demonstration's task and frame
  assert [int(r["start"]) for r in records] == [0, 1, 4, 8, 8, 9, 10, 12]
  assert [r["tasks"].tolist() for r in records] == [[0, 0]] * 4 + [[1, 1]] * 3 + [[2, 2]]
  assert [int(r["done_at"]) for r in records] == [2, 2, 5, 9, 11, 11, 11, 13]
  assert loader.relevant_episode_ids(store, [1, 2, 4]) == [2]
  report = compute_report(store)
  assert [(t["task"], t["episodes"], t["successes"]) for t in report["tasks"]] == [
    ("collect_wood", 2, 1),
    ("place_table", 2, 1),
    ("reach_far", 1, 1),
  ]


def test_success_frames_on_the_toy_are_last_frames(toy_store):
  """Toy episodes end on reaching their goal (the one reward): the success frame is the last one,
  the first positive reward; an episode that never got there also gives its last frame."""
  from data_pipelines.report import episode_success, success_frames  # pylint: disable=g-import-not-at-top

  store = EpisodeStore.open(toy_store)
  success = episode_success(store)[0]
  assert 0 < success.sum() < store.num_episodes
  offsets = store.episode_offsets
  np.testing.assert_array_equal(success_frames(store), offsets[1:] - 1)
  for e in np.nonzero(success)[0]:
    rewards = store.read_episode(int(e))["rewards"]
    assert rewards[-1] > 0 and np.all(rewards[:-1] == 0)
