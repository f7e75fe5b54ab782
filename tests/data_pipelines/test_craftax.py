"""Craftax-Classic: wrapper determinism, store round trip, achievement labels, a small batched collection.

Every test here shares one compiled program set (one env, one step per call): the collector runs
with num_envs=1 and chunk=1, which is what the wrapper uses, so craftax compiles once per session.
The first craftax use in a fresh venv also processes its textures (about 20 s) and caches them in
site-packages; `make_pixels_env` does that under a file lock, so parallel test workers do not read
a half-written cache.
"""

import bz2
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("craftax")

from data_pipelines.collect import _episode_seeds, collect  # noqa: E402
from data_pipelines.envs import craftax as cx  # noqa: E402
from data_pipelines.envs import make_env  # noqa: E402
from data_pipelines.episodes import EpisodeStore  # noqa: E402
from data_pipelines.report import compute_report  # noqa: E402

SIZE = 64
MAX_STEPS = 30
EPISODES = 3
GOALS = ("place_table", "make_wood_pickaxe")  # the episodes' goals are drawn from these
ONE_ENV = dict(size=SIZE, max_steps=MAX_STEPS, num_envs=1, chunk=1)  # the wrapper's program shapes


@pytest.fixture(scope="module")
def collected(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("craftax") / "store")
  summary = collect("craftax", path, episodes=EPISODES, seed=3, skills=(1.0, 0.5), goals=GOALS, **ONE_ENV)
  return path, summary


def test_names_match_craftax():
  from craftax.craftax_classic.constants import Achievement, Action  # pylint: disable=g-import-not-at-top

  assert cx.ACHIEVEMENT_NAMES == tuple(a.name.lower() for a in sorted(Achievement, key=lambda a: a.value))
  assert cx.ACTION_NAMES == tuple(a.name.lower() for a in sorted(Action, key=lambda a: a.value))
  env = make_env("craftax", size=SIZE, max_steps=MAX_STEPS)
  assert env.task_names == cx.ACHIEVEMENT_NAMES and len(env.task_names) == 22
  (comp,) = env.action_spec.components
  assert comp.kind == "discrete" and comp.size == 17 and comp.labels == cx.ACTION_NAMES


def test_small_collection_writes_a_store(collected):
  path, summary = collected
  store = EpisodeStore.open(path)
  assert summary["episodes"] == EPISODES and store.num_episodes == EPISODES
  assert store.num_frames == summary["frames"] and store.frame_shape == (SIZE, SIZE, 3)
  assert (store.episode_lengths <= MAX_STEPS + 1).all()
  for e in range(EPISODES):
    ep = store.read_episode(e)
    assert ep["frames"].dtype == np.uint8 and ep["frames"].std() > 0
    assert not ep["action_labelled"][0] and ep["action_labelled"][1:].all()
    assert ep["actions_discrete"][0, 0] == 0 and (ep["actions_discrete"] < 17).all()
    np.testing.assert_array_equal(ep["rewards"], ep["achievement_unlocks"].sum(-1))
    assert (ep["achievement_unlocks"].sum(0) <= 1).all()  # an achievement unlocks at most once
    assert (ep["tasks"] == ep["tasks"][0]).all() and cx.ACHIEVEMENT_NAMES[ep["tasks"][0]] in GOALS
  report = compute_report(store)
  unlocks = store.read("achievement_unlocks", 0, store.num_frames)
  assert [a["events"] for a in report["achievements"]] == unlocks.sum(0).tolist()
  assert report["returns"]["mean"] == pytest.approx(summary["mean_return"])


def test_goal_probs_are_uniform_over_the_named_stages():
  from data_pipelines.envs.craftax.collect import default_goal_probs, goal_probs  # pylint: disable=g-import-not-at-top

  names = [stage[0] for stage in cx.STAGES]
  p = goal_probs(GOALS)
  assert p.shape == (len(cx.STAGES),) and p.sum() == pytest.approx(1.0)
  assert p[names.index("place_table")] == p[names.index("make_wood_pickaxe")] == 0.5
  assert np.count_nonzero(p) == 2
  np.testing.assert_array_equal(goal_probs(()), default_goal_probs())
  assert default_goal_probs()[-1] == 0.5 and names[-1] == "collect_diamond"
  with pytest.raises(ValueError, match="unknown goal 'fly'; choose among the stages collect_wood, place_table"):
    goal_probs(("collect_wood", "fly"))


def test_wrapper_replays_the_store_and_labels_agree(collected):
  path, _ = collected
  store = EpisodeStore.open(path)
  env = make_env("craftax", size=SIZE, max_steps=MAX_STEPS)
  for e in range(EPISODES):
    ep = store.read_episode(e)
    frame, _ = env.reset(_episode_seeds(3, e)[0])
    np.testing.assert_array_equal(frame, ep["frames"][0])
    flags = np.zeros((22,), bool)
    done = False
    for t in range(1, len(ep["frames"])):
      assert not done
      frame, reward, done, info = env.step(ep["actions_discrete"][t])
      np.testing.assert_array_equal(frame, ep["frames"][t])
      assert reward == ep["rewards"][t]
      np.testing.assert_array_equal(info["unlocked"], ep["achievement_unlocks"][t].astype(bool))
      # The labels are exactly the env's own achievement flags switching on.
      env_flags = np.asarray(env.state.achievements)
      np.testing.assert_array_equal(env_flags, flags | info["unlocked"])
      assert reward == (env_flags & ~flags).sum()
      flags = env_flags
    assert done


def test_wrapper_is_deterministic_for_a_seed(collected):
  del collected  # only to share the compiled programs
  env = make_env("craftax", size=SIZE, max_steps=MAX_STEPS)
  actions = [5, 1, 3, 5, 2, 4, 5, 0]

  def run(seed):
    frame, _ = env.reset(seed)
    frames = [frame] + [env.step(a)[0] for a in actions]
    return np.stack(frames)

  a, b, c = run(11), run(11), run(12)
  assert a.shape == (len(actions) + 1, SIZE, SIZE, 3) and a.dtype == np.uint8
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a[0], c[0])
  with pytest.raises(ValueError, match="action must be in"):
    env.step(17)


# Builds Craftax's pixel env against a texture cache at argv[1] and prints the agent-size atlas shape.
_BUILD_ENV = """
import sys
from craftax.craftax_classic import constants as cc
cc.TEXTURE_CACHE_FILE = sys.argv[1]
import craftax.craftax_env
from data_pipelines.envs.craftax.env import make_pixels_env
print("ready", flush=True)  # imports done: next, the lock
make_pixels_env()
print(cc.load_all_textures()[cc.BLOCK_PIXEL_SIZE_AGENT]["full_map_block_textures"].shape)
"""


def test_texture_cache_is_read_under_a_lock_and_rebuilt_when_damaged(tmp_path):
  """A fresh venv's first craftax users race on the texture cache craftax writes in place: a process
  that finds the file half-written reads EOFError. `make_pixels_env` waits for the lock the writer
  holds, then reads the whole file; with no writer, it rebuilds a damaged file."""
  import fcntl  # pylint: disable=g-import-not-at-top

  from craftax.craftax_classic import constants as cc  # pylint: disable=g-import-not-at-top

  from data_pipelines.envs.craftax.env import make_pixels_env  # pylint: disable=g-import-not-at-top

  make_pixels_env()  # makes sure the venv's cache exists
  with open(cc.TEXTURE_CACHE_FILE, "rb") as f:
    whole = f.read()
  cache = tmp_path / "textures.pbz2"
  cache.write_bytes(whole[: len(whole) // 2])  # a writer is half-way through
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  run = lambda: subprocess.Popen(  # noqa: E731
    [sys.executable, "-c", _BUILD_ENV, str(cache)], cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
  )
  with open(str(cache) + ".lock", "a") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    child = run()
    assert child.stdout.readline().strip() == "ready", child.communicate()[1][-2000:]
    try:
      child.wait(timeout=2)  # past its imports: without the lock it would now read the half file
    except subprocess.TimeoutExpired:
      pass
    assert child.returncode is None, child.communicate()[1][-2000:]  # it must still be waiting for the lock
    cache.write_bytes(whole)  # the writer finishes, then releases the lock
  out, err = child.communicate(timeout=120)
  assert child.returncode == 0, err[-2000:]
  assert out.strip().splitlines()[-1] == "(17, 49, 63, 3)" and "Processing" not in out

  cache.write_bytes(whole[: len(whole) // 2])  # left damaged by a killed writer: rebuilt
  child = run()
  out, err = child.communicate(timeout=300)
  assert child.returncode == 0, err[-2000:]
  assert out.strip().splitlines()[-1] == "(17, 49, 63, 3)" and "Processing" in out
  with bz2.BZ2File(cache, "rb") as f:
    assert pickle.load(f)[7]["full_map_block_textures"].shape == (17, 49, 63, 3)


def test_success_frames_are_the_task_unlocks(tmp_path):
  """`success_frames`: the frame that records the unlock of the episode's own task, or the
  episode's last frame; other achievements (every one pays +1) do not count."""
  from data_pipelines.report import episode_success, success_frames  # pylint: disable=g-import-not-at-top

  path = str(tmp_path / "wood")
  collect("craftax", path, episodes=4, seed=5, skills=(1.0, 0.0), goals=("collect_wood", "place_table"), **ONE_ENV)
  store = EpisodeStore.open(path)
  success = episode_success(store)[0]
  done_at = success_frames(store)
  offsets = store.episode_offsets
  assert success.any()
  for e in range(store.num_episodes):
    ep = store.read_episode(e)
    task = cx.ACHIEVEMENT_NAMES.index(store.task_names[ep["tasks"][0]])
    hits = np.nonzero(ep["achievement_unlocks"][:, task])[0]
    want = offsets[e] + hits[0] if success[e] else offsets[e + 1] - 1
    assert done_at[e] == want and bool(len(hits)) == bool(success[e])
