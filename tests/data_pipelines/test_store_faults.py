"""EpisodeStore under faults: a collector killed mid-append, a reader beside a live writer,
a corrupt chunk on disk, bad collector input. Nothing committed is ever lost or misread."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from data_pipelines.collect import collect
from data_pipelines.episodes import EpisodeStore, StoreError
from tests.data_pipelines.helpers import episode, make_store
from tests.pipeline_helpers import tree_hash

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SEED = 7
COLLECT_ARGS = dict(seed=3, skills=(0.9, 0.0), size=16, max_steps=40)


def _env():
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  env.pop("XLA_FLAGS", None)
  return env


def _commit(path) -> dict:
  with open(os.path.join(path, "commit.json")) as f:
    return json.load(f)


def _assert_complete(path) -> EpisodeStore:
  """The store opens with exactly the committed episodes, and every one of them reads back."""
  store = EpisodeStore.open(path)
  commit = _commit(path)
  assert store.num_episodes == commit["num_episodes"] and store.num_frames == commit["num_frames"]
  assert store.episode_offsets[-1] == store.num_frames and (store.episode_lengths > 0).all()
  everything = store.read_many(("frames", "rewards", "tasks", "action_labelled"), 0, store.num_frames)
  assert everything["frames"].shape == (store.num_frames,) + store.frame_shape
  for i in range(store.num_episodes):
    ep = store.read_episode(i)
    assert ep["frames"].shape[0] == store.episode_lengths[i]
    assert not ep["action_labelled"][0] and ep["action_labelled"][1:].all()  # episode boundaries line up
  return store


def _assert_same_episodes(store, reference, count):
  """The first `count` episodes of `store` equal `reference`'s (same seeds, same data)."""
  np.testing.assert_array_equal(store.episode_offsets[: count + 1], reference.episode_offsets[: count + 1])
  n = int(reference.episode_offsets[count])
  for name in reference.array_names:
    if name != "episode_offsets":
      np.testing.assert_array_equal(store.read(name, 0, n), reference.read(name, 0, n), err_msg=name)


# A collector subprocess that SIGKILLs itself in the middle of its 3rd commit: every array of
# the new episodes (and their offsets) is written, commit.json is not. COMMIT_FRAMES is made
# small so that the run commits many times.
_SELF_KILL = textwrap.dedent("""
    import os, signal, sys
    from data_pipelines import collect as c
    from data_pipelines.episodes import EpisodeStore
    c.COMMIT_FRAMES = 64
    real, commits = EpisodeStore._write_json, []
    def write_json(self, key, value):
      if key == "commit.json" and value["num_episodes"] > 0:
        commits.append(value)
        if len(commits) == 3:
          os.kill(os.getpid(), signal.SIGKILL)
      real(self, key, value)
    EpisodeStore._write_json = write_json
    c.collect("toy", sys.argv[1], episodes=int(sys.argv[2]), seed=3, skills=(0.9, 0.0), size=16, max_steps=40)
""")


def test_collector_killed_between_writes_and_commit_keeps_committed_episodes(tmp_path):
  path = str(tmp_path / "store")
  proc = subprocess.run(
    [sys.executable, "-c", _SELF_KILL, path, "60"], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120
  )
  assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
  committed = _commit(path)["num_episodes"]
  assert committed > 0
  # Rows of the killed append are on disk past the commit (offsets included), yet invisible.
  store = _assert_complete(path)
  raw = EpisodeStore.open(path)._read_raw("episode_offsets", 0, committed + 2)
  assert raw[committed + 1] > raw[committed]  # the uncommitted episode's offset was written
  reference = EpisodeStore.open(collect("toy", str(tmp_path / "ref"), episodes=60, **COLLECT_ARGS)["output"])
  _assert_same_episodes(store, reference, committed)
  # The next writer continues from the commit: the uncommitted rows are overwritten and the
  # result is the store an uninterrupted collection writes.
  collect("toy", path, episodes=60 - committed, append=True, **COLLECT_ARGS)
  resumed = _assert_complete(path)
  assert resumed.num_episodes == 60
  _assert_same_episodes(resumed, reference, 60)


def test_collector_sigkill_at_random_moments_then_append_loses_nothing(tmp_path):
  """`python -m data_pipelines.collect` killed -9 at seeded-random moments while it commits."""
  rng = np.random.default_rng(SEED)
  path = str(tmp_path / "store")
  total, kills = 400, []
  cmd = [
    sys.executable,
    "-m",
    "data_pipelines.collect",
    "--env=toy",
    f"--output={path}",
    "--seed=3",
    "--skills=0.9,0.0",
    "--size=16",
    "--max_steps=40",
  ]
  for _ in range(3):
    have = _commit(path)["num_episodes"] if os.path.exists(os.path.join(path, "commit.json")) else 0
    if have >= total:  # a fast machine finished the whole collection before the last kill
      break
    extra = ["--append"] if os.path.exists(path) else []
    proc = subprocess.Popen(
      cmd + [f"--episodes={total - have}"] + extra,
      cwd=ROOT,
      env=_env(),
      stdout=subprocess.DEVNULL,
      stderr=subprocess.PIPE,
      text=True,
    )
    # Wait for a commit of this process, then kill at a random moment of what follows.
    deadline = time.time() + 120
    while proc.poll() is None and time.time() < deadline:
      if os.path.exists(os.path.join(path, "commit.json")):
        try:
          if _commit(path)["num_episodes"] > have:
            break
        except (json.JSONDecodeError, OSError):
          pass
      time.sleep(0.005)
    time.sleep(float(rng.uniform(0.0, 0.3)))
    if proc.poll() is not None:  # finished before the kill: nothing left to interrupt
      assert proc.returncode == 0, proc.stderr.read()
      break
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    kills.append(_commit(path)["num_episodes"])
    _assert_complete(path)  # after every kill: opens, every committed episode readable
  print(f"collector killed with {kills} episodes committed")
  assert kills, "the collector finished before any kill"
  have = _commit(path)["num_episodes"]
  if have < total:
    done = subprocess.run(
      cmd + [f"--episodes={total - have}", "--append"],
      cwd=ROOT,
      env=_env(),
      capture_output=True,
      text=True,
      timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
  store = _assert_complete(path)
  assert store.num_episodes == total
  reference = EpisodeStore.open(collect("toy", str(tmp_path / "ref"), episodes=total, **COLLECT_ARGS)["output"])
  _assert_same_episodes(store, reference, total)


_WRITER = textwrap.dedent("""
    import sys, time
    import numpy as np
    from data_pipelines.episodes import EpisodeStore
    from tests.data_pipelines.helpers import episode
    path, lengths = sys.argv[1], [int(x) for x in sys.argv[2].split(",")]
    store = EpisodeStore.open(path, "a")
    for e in range(store.num_episodes, len(lengths)):
      store.append(**episode(e, lengths[e]))
      time.sleep(0.01)
""")


def test_reader_beside_a_writer_always_sees_a_consistent_prefix(tmp_path):
  rng = np.random.default_rng(SEED)
  lengths = [int(x) for x in rng.integers(1, 50, size=60)]  # ~1500 frames: crosses a shard and a resize
  path = str(tmp_path / "store")
  make_store(path, lengths[:1])
  expected_offsets = np.cumsum([0] + lengths)
  writer = subprocess.Popen(
    [sys.executable, "-c", _WRITER, path, ",".join(map(str, lengths))],
    cwd=ROOT,
    env=_env(),
    stdout=subprocess.DEVNULL,
    stderr=subprocess.PIPE,
    text=True,
  )
  long_lived = EpisodeStore.open(path)
  seen, mid_write = [], 0
  try:
    while True:
      running = writer.poll() is None
      for store in (EpisodeStore.open(path), long_lived):
        if store is long_lived:
          store.refresh()
        n = store.num_episodes
        np.testing.assert_array_equal(store.episode_offsets, expected_offsets[: n + 1])
        frames = store.read("frames", 0, store.num_frames)
        assert frames.shape[0] == expected_offsets[n]
        np.testing.assert_array_equal(frames[:, 0, 0, 0], np.repeat(np.arange(n), lengths[:n]).astype(np.uint8))
        last = store.read_episode(n - 1)  # the newest committed episode is complete
        np.testing.assert_array_equal(last["frames"], episode(n - 1, lengths[n - 1])["frames_THWC"])
        np.testing.assert_array_equal(last["rewards"], episode(n - 1, lengths[n - 1])["rewards_T"])
      seen.append(long_lived.num_episodes)
      if running and 1 < long_lived.num_episodes < len(lengths):
        mid_write += 1
      if not running:
        break
  finally:
    if writer.poll() is None:
      writer.kill()
    writer.wait()
  assert writer.returncode == 0, writer.stderr.read()[-2000:]
  assert seen == sorted(seen) and seen[-1] == len(lengths)  # never goes back, ends complete
  assert mid_write >= 3, seen  # polled several times while the writer was appending
  print(f"reader: {len(seen)} polls, {mid_write} while the writer appended, {len(set(seen))} distinct commits seen")


def test_corrupt_chunk_error_names_array_episode_and_path(tmp_path):
  path = str(tmp_path / "store")
  make_store(path, [5, 30, 12])
  shard = os.path.join(path, "frames", "c", "0", "0", "0", "0")  # the one frames shard
  with open(shard, "r+b") as f:
    f.seek(os.path.getsize(shard) - 40)
    f.write(b"\x00" * 40)  # the shard index at the end: its checksum no longer matches
  rewards = os.path.join(path, "rewards", "c", "0")  # a plain zstd chunk
  with open(rewards, "r+b") as f:
    f.write(b"\xff" * 8)
  store = EpisodeStore.open(path)  # per-frame arrays are read lazily: opening still works
  with pytest.raises(StoreError) as err:
    store.read_episode(1)
  msg = str(err.value)
  assert msg.startswith(
    f"dataset {path}: array 'frames', episode 1 / frames 0:30 (rows [5, 35) under "
    f"{path}/frames) could not be read, a chunk may be corrupt"
  ), msg
  assert "\n" not in msg and "re-create it with python -m data_pipelines.collect" in msg
  with pytest.raises(StoreError, match=r"array 'rewards', episode 2 / frames 3:9 \(rows \[38, 44\) under "):
    store.read("rewards", 38, 44)
  with pytest.raises(StoreError, match=r"array 'frames', episodes 0-2 / frames 0:47 of the store"):
    store.read("frames", 0, 47)


@pytest.mark.parametrize(
  "args,expect",
  [
    (["--env=pong9000", "--episodes=2"], "error: --env: unknown env 'pong9000'; choose one of"),
    (["--episodes=-3"], "error: --episodes: must be >= 1, got -3"),
    (["--episodes=two"], "error: flag --episodes=two"),
    (["--skills=0.5,1.5"], "error: --skills: give a comma-separated list of values in [0, 1]"),
    (["--size=0"], "error: --size:"),
    (["--max_steps=0"], "error: --max_steps: must be >= 1"),
    (["OUTPUT_IS_FILE"], "is a file, not a directory"),
    (["--append", "APPEND_TO_NON_STORE"], "error: --append: dataset"),
    (["--append", "APPEND_OTHER_SIZE"], "error: --append: "),
    (["CREATE_OVER_STORE"], "already exist"),
  ],
)
def test_collect_bad_input_is_one_line_and_changes_nothing(tmp_path, args, expect):
  existing = tmp_path / "existing"
  collect("toy", str(existing), episodes=2, seed=0, skills=(1.0,), size=16, max_steps=10)
  (tmp_path / "plain.txt").write_text("not a store")
  (tmp_path / "junk").mkdir()
  (tmp_path / "junk" / "notes.txt").write_text("not a store either")
  output = {
    "OUTPUT_IS_FILE": tmp_path / "plain.txt",
    "APPEND_TO_NON_STORE": tmp_path / "junk",
    "APPEND_OTHER_SIZE": existing,
    "CREATE_OVER_STORE": existing,
  }
  target = next((output[a] for a in args if a in output), tmp_path / "new")
  argv = [a for a in args if a not in output] + [f"--output={target}"]
  if "APPEND_OTHER_SIZE" in args:
    argv.append("--size=32")
  elif "--size=0" not in args:
    argv.append("--size=16")
  before = tree_hash(tmp_path)
  proc = subprocess.run(
    [sys.executable, "-m", "data_pipelines.collect", *argv],
    cwd=ROOT,
    env=_env(),
    capture_output=True,
    text=True,
    timeout=120,
  )
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert len(lines) == 1 and lines[0].startswith("error:") and expect in lines[0], proc.stderr[-2000:]
  assert tree_hash(tmp_path) == before and not (tmp_path / "new").exists()
