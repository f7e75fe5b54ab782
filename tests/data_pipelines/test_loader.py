"""WindowSource and the Grain loader: windows, determinism, process shards, resumable state, global batches."""

import pickle

import jax
import numpy as np
import pytest
from jax.sharding import AxisType

from data_pipelines import loader
from data_pipelines.episodes import EpisodeStore
from data_pipelines.windows import WindowSource, coverage, window_table
from tests.data_pipelines.helpers import make_store

LENGTHS = [12, 3, 20, 7, 9, 15, 4, 11]
WINDOW = 5


@pytest.fixture(scope="module")
def store_path(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("loader") / "store")
  make_store(path, LENGTHS)
  return path


def _num_windows(ids):
  return sum(LENGTHS[i] for i in ids)  # pad="end": one window starts at every frame


def _check_window(record_frames_TWHC, first_T):
  """Every frame of a window comes from one episode, at consecutive time steps."""
  ep_T = record_frames_TWHC[:, 0, 0, 0]
  t_T = record_frames_TWHC[:, 0, 1, 0].astype(int)
  assert (ep_T == ep_T[0]).all()
  np.testing.assert_array_equal(np.diff(t_T), 1)
  np.testing.assert_array_equal(first_T, t_T == 0)


def test_window_table():
  offsets = np.array([0, 4, 6, 13])
  starts, ep_starts, ep_ends = window_table(offsets, [2, 0, 1], 3, pad="none")
  np.testing.assert_array_equal(starts, [6, 7, 8, 9, 10, 0, 1])  # episode 1 (2 frames) has none
  np.testing.assert_array_equal(ep_starts, [6, 6, 6, 6, 6, 0, 0])
  np.testing.assert_array_equal(ep_ends, [13, 13, 13, 13, 13, 4, 4])
  starts, ep_starts, ep_ends = window_table(offsets, [2, 0, 1], 3, pad="end")  # one window per frame
  np.testing.assert_array_equal(starts, [6, 7, 8, 9, 10, 11, 12, 0, 1, 2, 3, 4, 5])
  np.testing.assert_array_equal(ep_ends, [13] * 7 + [4] * 4 + [6] * 2)
  starts, _, _ = window_table(offsets, [1, 0], 3, pad="start")  # windows end at every frame
  np.testing.assert_array_equal(starts, [2, 3, -2, -1, 0, 1])
  with pytest.raises(ValueError, match="window padding must be one of"):
    window_table(offsets, [0], 3, pad="both")
  # last_anchor (per episode of the store): episode 2's windows start at 6..8, episode 0's at 0..1,
  # episode 1's at 4 only; with pad="start" the anchor is the window's last frame.
  last = np.array([1, 4, 8])
  starts, ep_starts, ep_ends = window_table(offsets, [2, 0, 1], 3, pad="end", last_anchor=last)
  np.testing.assert_array_equal(starts, [6, 7, 8, 0, 1, 4])
  np.testing.assert_array_equal(ep_starts, [6, 6, 6, 0, 0, 4])
  np.testing.assert_array_equal(ep_ends, [13, 13, 13, 4, 4, 6])
  starts, _, _ = window_table(offsets, [1, 0], 3, pad="start", last_anchor=last)
  np.testing.assert_array_equal(starts, [2, -2, -1])


@pytest.mark.parametrize("pad", ["end", "start"])
def test_windows_cover_every_frame(store_path, pad):
  """Every frame of every episode (3-frame and 4-frame episodes too) is a valid frame of WINDOW
  windows except the first WINDOW - 1 (pad="end") or last (pad="start") of each episode; padding
  repeats the nearest real frame with the null, unlabelled action and no reward."""
  ids = np.arange(len(LENGTHS))
  source = WindowSource(store_path, WINDOW, ids, pad=pad)
  assert len(source) == _num_windows(ids)
  seen = {e: np.zeros(n, int) for e, n in enumerate(LENGTHS)}
  for i in range(len(source)):
    rec = source[i]
    assert rec["frames"].shape == (WINDOW, 8, 8, 3) and rec["frames"].dtype == np.uint8
    assert rec["actions_discrete"].shape == (WINDOW, 1) and rec["index"] == i
    v = rec["valid_T"]
    assert v.any() and v.sum() == np.diff(np.flatnonzero(np.diff(np.r_[0, v.astype(int), 0]))).item()  # one run
    real = rec["frames"][v]
    _check_window(real, rec["first_T"][v])
    e = int(real[0, 0, 0, 0])
    seen[e][real[:, 0, 1, 0].astype(int)] += 1
    if pad == "end":
      assert v[0]  # real frames first: padding never precedes a real frame
    else:
      assert v[-1]  # the window ends at its anchor frame
    pad_slots = ~v
    if pad_slots.any():
      edge = real[-1] if pad == "end" else real[0]
      assert (rec["frames"][pad_slots] == edge).all()
      assert (rec["actions_discrete"][pad_slots] == 0).all() and not rec["action_labelled"][pad_slots].any()
      assert (rec["rewards"][pad_slots] == 0).all() and not rec["first_T"][pad_slots].any()
  for e, n in enumerate(LENGTHS):
    k = np.arange(n)
    expected = np.minimum(k + 1, WINDOW) if pad == "end" else np.minimum(n - k, WINDOW)
    np.testing.assert_array_equal(seen[e], expected)
  clone = pickle.loads(pickle.dumps(source))
  assert clone._store is None
  np.testing.assert_array_equal(clone[3]["frames"], source[3]["frames"])


def test_coverage_line(store_path):
  """100% of episodes, frames, reward and terminal frames under the padding rule; the old
  inside-only rule misses the short episodes (3 and 4 frames) and under-draws last frames."""
  store = EpisodeStore.open(store_path)
  ids = list(range(len(LENGTHS)))
  c = coverage(store, ids, WINDOW, pad="end", relevant_ids=[1, 6])
  for key in ("episodes", "frames", "relevant_episodes", "reward_frames", "terminal_frames"):
    assert c[key] == 1.0, key
  # The last frame of an episode of L frames is in min(L, WINDOW) windows.
  assert c["windows_per_terminal_frame"] == pytest.approx(np.mean(np.minimum(LENGTHS, WINDOW)))
  total = sum(sum(min(k + 1, WINDOW) for k in range(n)) for n in LENGTHS)
  assert c["windows_per_frame"] == pytest.approx(total / sum(LENGTHS))
  assert c["num_episodes"] == len(LENGTHS) and c["num_relevant_episodes"] == 2
  old = coverage(store, ids, WINDOW, pad="none", relevant_ids=[1, 6])
  assert old["episodes"] == pytest.approx(6 / 8) and old["relevant_episodes"] == 0.0
  assert old["frames"] == pytest.approx((sum(LENGTHS) - 7) / sum(LENGTHS))
  assert old["windows_per_terminal_frame"] == pytest.approx(6 / 8)  # one window each, none for 2 episodes
  assert coverage(store, ids, WINDOW, pad="start")["frames"] == 1.0


def _take(it, n):
  return [next(it) for _ in range(n)]


def test_train_iterator_deterministic(store_path):
  kw = dict(window=WINDOW, batch_size=4, episode_ids=np.arange(8), num_threads=2)
  a = _take(loader.train_iterator(store_path, seed=3, **kw), 6)
  b = _take(loader.train_iterator(store_path, seed=3, **kw), 6)
  c = _take(loader.train_iterator(store_path, seed=4, **kw), 6)
  assert a[0]["frames"].shape == (4, WINDOW, 8, 8, 3) and a[0]["frames"].dtype == np.uint8
  assert a[0]["first_T"].shape == (4, WINDOW) and a[0]["index"].shape == (4,)
  for x, y in zip(a, b):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])
  assert any(not np.array_equal(x["index"], y["index"]) for x, y in zip(a, c))
  for batch in a:
    for frames_TWHC, first_T, valid_T in zip(batch["frames"], batch["first_T"], batch["valid_T"]):
      _check_window(frames_TWHC[valid_T], first_T[valid_T])


def test_process_shards_disjoint_and_cover_epoch(store_path):
  ids = np.arange(8)
  n, batch, count = _num_windows(ids), 3, 2
  per_process = n // count // batch * batch
  shards = []
  for p in range(count):
    it = loader.train_iterator(
      store_path, window=WINDOW, batch_size=batch, seed=0, episode_ids=ids, process_index=p, process_count=count
    )
    epochs = [np.concatenate([b["index"] for b in _take(it, per_process // batch)]) for _ in range(2)]
    assert all(len(set(e)) == per_process for e in epochs)
    assert not np.array_equal(epochs[0], epochs[1])  # each epoch is reshuffled
    shards.append(epochs[0])
  assert set(shards[0]).isdisjoint(shards[1])
  covered = set(shards[0]) | set(shards[1])
  assert len(covered) == count * per_process and len(covered) > n - count * batch


def test_state_round_trip_mid_epoch(store_path):
  kw = dict(window=WINDOW, batch_size=4, seed=1, episode_ids=np.arange(8))
  it = loader.train_iterator(store_path, **kw)
  _take(it, 5)
  state = it.get_state()
  expected = _take(it, 4)
  resumed = loader.train_iterator(store_path, **kw)
  resumed.set_state(state)
  for x, y in zip(expected, _take(resumed, 4)):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])


def test_orbax_checkpoint_of_iterator(store_path, tmp_path):
  import grain
  import orbax.checkpoint as ocp

  kw = dict(window=WINDOW, batch_size=4, seed=2, episode_ids=np.arange(8))
  it = loader.train_iterator(store_path, **kw)
  _take(it, 3)
  with ocp.CheckpointManager(tmp_path / "ckpt", item_names=("data",)) as mngr:
    mngr.save(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
    mngr.wait_until_finished()
    expected = next(it)
    resumed = loader.train_iterator(store_path, **kw)
    mngr.restore(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(resumed)))
  np.testing.assert_array_equal(next(resumed)["index"], expected["index"])


def test_eval_batches(store_path):
  kw = dict(window=WINDOW, batch_size=4, episode_ids=[2, 5])
  a = loader.eval_batches(store_path, max_batches=3, **kw)
  b = loader.eval_batches(store_path, max_batches=3, **kw)
  assert len(a) == 3 and all(x["frames"].shape == (4, WINDOW, 8, 8, 3) for x in a)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x["index"], y["index"])
  idx = np.concatenate([x["index"] for x in a])
  assert len(set(idx)) == 12 and (np.diff(idx) > 0).all()
  everything = loader.eval_batches(store_path, max_batches=100, **kw)
  assert len(everything) == -(-_num_windows([2, 5]) // 4)


@pytest.mark.parametrize("processes", [2, 4])
def test_eval_batches_disjoint_across_processes(store_path, processes):
  """Each process evaluates its own block of every global batch: disjoint, and together the
  global batches of a 1-process evaluation (so the evaluation's mean is the same)."""
  kw = dict(window=WINDOW, episode_ids=[0, 2, 5, 7], max_batches=3)
  one = loader.eval_batches(store_path, batch_size=8, **kw)
  per = [
    loader.eval_batches(store_path, batch_size=8 // processes, process_index=p, process_count=processes, **kw)
    for p in range(processes)
  ]
  assert all(len(b) == len(one) for b in per)
  for g, glob in enumerate(one):
    rows = [per[p][g]["index"] for p in range(processes)]
    assert len(set(np.concatenate(rows))) == 8  # disjoint
    for key in ("index", "frames", "valid_T"):
      np.testing.assert_array_equal(np.concatenate([per[p][g][key] for p in range(processes)]), glob[key])


def test_clear_errors(store_path):
  kw = dict(seed=0, episode_ids=np.arange(8))
  with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
    loader.train_iterator(store_path, window=WINDOW, batch_size=0, **kw)
  with pytest.raises(
    ValueError,
    match=r"dataset .* has no episode of at least 21 frames \(longest: 20\); lower "
    r"--config.data.window or collect longer episodes",
  ):
    loader.train_iterator(store_path, window=21, batch_size=2, pad="none", **kw)
  # Under the default padding rule every episode has windows, however long the window.
  assert len(WindowSource(store_path, 21, [1])) == LENGTHS[1]
  with pytest.raises(ValueError, match="the episode list is empty"):
    loader.train_iterator(store_path, window=WINDOW, batch_size=2, seed=0, episode_ids=[])
  with pytest.raises(ValueError, match="fewer than one global batch"):
    loader.train_iterator(store_path, window=WINDOW, batch_size=1000, **kw)
  with pytest.raises(ValueError, match="no per-frame array 'latents'"):
    WindowSource(store_path, WINDOW, [0], fields=("frames", "latents"))


def test_global_batch_on_8_devices(store_path):
  mesh = jax.make_mesh((4, 2, 1), ("data", "fsdp", "tensor"), axis_types=(AxisType.Auto,) * 3)
  local = next(loader.train_iterator(store_path, window=WINDOW, batch_size=8, seed=0, episode_ids=np.arange(8)))
  batch = loader.global_batch(local, mesh)
  assert batch["frames"].shape == (8, WINDOW, 8, 8, 3) and batch["frames"].dtype == np.uint8
  assert batch["index"].shape == (8,)
  assert len(batch["frames"].sharding.device_set) == 8
  assert batch["frames"].addressable_shards[0].data.shape == (1, WINDOW, 8, 8, 3)
  np.testing.assert_array_equal(np.asarray(batch["frames"]), local["frames"])
  with pytest.raises(ValueError, match="global batch 6 does not divide the 8 devices"):
    loader.global_batch({"x": np.zeros((6, 2))}, mesh)


def test_data_modules_are_jax_free():
  """Collector-side modules load neither jax nor tensorstore at import. (grain itself imports
  jax modules, without touching devices, so windows/loader are checked by their source.)"""
  import os
  import subprocess
  import sys

  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  code = (
    "import sys, data_pipelines.collect, data_pipelines.envs, data_pipelines.episodes; "
    "assert 'jax' not in sys.modules and 'tensorstore' not in sys.modules"
  )
  result = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=60)
  assert result.returncode == 0, result.stderr[-500:]
  for name in ("windows.py", "episodes.py"):
    text = open(os.path.join(root, "data_pipelines", name)).read()
    assert "import jax" not in text and "from jax" not in text


def test_coverage_on_a_collected_toy_store(tiny_store):
  """A real toy store (episodes from 2 to 64 frames): the padding rule reaches 100% of everything
  with phase 2's 16-frame windows; the inside-only rule misses most quick successes."""
  store = EpisodeStore.open(tiny_store)
  ids = list(range(store.num_episodes))
  lengths = store.episode_lengths
  assert lengths.min() < 16 < lengths.max()
  new = loader.window_coverage(store, ids, 16)
  assert all(new[k] == 1.0 for k in ("episodes", "frames", "relevant_episodes", "reward_frames", "terminal_frames"))
  old = loader.window_coverage(store, ids, 16, pad="none")
  assert old["episodes"] == pytest.approx(np.mean(lengths >= 16))
