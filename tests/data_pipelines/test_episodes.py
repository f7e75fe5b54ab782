"""EpisodeStore: round trip, growth, atomic commit, validation of malformed stores."""

import json
import os

import numpy as np
import pytest
import tensorstore as ts

from data_pipelines.episodes import EpisodeStore, StoreError
from tests.data_pipelines.helpers import FRAME, SPEC, episode, make_store


def _assert_episode_equal(got, ep):
  np.testing.assert_array_equal(got["frames"], ep["frames_THWC"])
  np.testing.assert_array_equal(got["actions_discrete"], ep["actions_discrete_TA"])
  np.testing.assert_array_equal(got["rewards"], ep["rewards_T"])
  np.testing.assert_array_equal(got["tasks"], ep["tasks_T"])
  np.testing.assert_array_equal(got["action_labelled"], ep["action_labelled_T"])


@pytest.mark.parametrize("scheme", ["dir", "file", "memory"])
def test_round_trip(tmp_path, scheme):
  path = {"dir": str(tmp_path / "s"), "file": f"file://{tmp_path}/s", "memory": f"memory://rt_{tmp_path.name}"}[scheme]
  lengths = [5, 17, 1, 40, 9]
  _, episodes = make_store(path, lengths)
  store = EpisodeStore.open(path)
  assert store.num_episodes == 5 and store.num_frames == sum(lengths)
  np.testing.assert_array_equal(store.episode_offsets, np.cumsum([0] + lengths))
  assert store.episode_offsets.dtype == np.int64
  np.testing.assert_array_equal(store.episode_lengths, lengths)
  assert store.frame_shape == FRAME and store.action_spec == SPEC and store.task_names == ("a", "b", "c")
  meta = store.metadata
  assert meta["schema_version"] == 1 and meta["env"] == "synthetic" and meta["fps"] == 10
  for i, ep in enumerate(episodes):
    _assert_episode_equal(store.read_episode(i), ep)
  np.testing.assert_array_equal(store.read("frames", 5, 23), np.concatenate([e["frames_THWC"] for e in episodes[1:3]]))
  with pytest.raises(IndexError, match="outside the committed range"):
    store.read("rewards", 0, store.num_frames + 1)


def test_growth_past_capacity_and_refresh(tmp_path):
  path = str(tmp_path / "s")
  writer, _ = make_store(path, [600])
  reader = EpisodeStore.open(path)
  big = episode(1, 900)  # crosses the first 1024-frame allocation and shard
  writer.append(**big)
  assert reader.num_frames == 600
  reader.refresh()
  assert reader.num_episodes == 2 and reader.num_frames == 1500
  _assert_episode_equal(reader.read_episode(1), big)


def test_create_refuses_existing(tmp_path):
  path = str(tmp_path / "s")
  make_store(path, [3])
  with pytest.raises(StoreError, match="refusing to create a store where files already exist"):
    make_store(path, [3])


def test_append_validates_inputs(tmp_path):
  store, _ = make_store(str(tmp_path / "s"), [3])
  ep = episode(0, 4)
  with pytest.raises(StoreError, match=r"frames has shape \[4, 8, 8, 4\], expected \[4, 8, 8, 3\]"):
    store.append(**dict(ep, frames_THWC=np.zeros((4, 8, 8, 4), np.uint8)))
  with pytest.raises(StoreError, match="frames has dtype float32, expected uint8"):
    store.append(**dict(ep, frames_THWC=ep["frames_THWC"].astype(np.float32)))
  with pytest.raises(StoreError, match=r"rewards has shape \[3\], expected \[4\]"):
    store.append(**dict(ep, rewards_T=np.zeros(3)))
  with pytest.raises(StoreError, match="actions_continuous given but the action spec has no such columns"):
    store.append(**ep, actions_continuous_TA=np.zeros((4, 2), np.float32))
  with pytest.raises(StoreError, match="opened read-only"):
    EpisodeStore.open(store.path, "r").append(**ep)
  assert EpisodeStore.open(store.path).num_episodes == 1  # failed appends committed nothing


def test_crash_before_commit_exposes_nothing(tmp_path, monkeypatch):
  path = str(tmp_path / "s")
  store, episodes = make_store(path, [6, 7])
  real_write = EpisodeStore._write_json

  def crash_on_commit(self, key, value):
    if key == "commit.json":
      raise KeyboardInterrupt("simulated crash")
    real_write(self, key, value)

  monkeypatch.setattr(EpisodeStore, "_write_json", crash_on_commit)
  with pytest.raises(KeyboardInterrupt):
    store.append(**episode(2, 30))  # arrays and the offset are written, the commit is not
  monkeypatch.undo()
  reopened = EpisodeStore.open(path, "a")
  assert reopened.num_episodes == 2 and reopened.num_frames == 13
  assert EpisodeStore.open(path).read("frames", 0, 13).shape == (13,) + FRAME
  # The next writer overwrites the uncommitted rows.
  again = episode(3, 4)
  assert reopened.append(**again) == 2
  final = EpisodeStore.open(path)
  assert final.num_frames == 17
  _assert_episode_equal(final.read_episode(2), again)
  _assert_episode_equal(final.read_episode(0), episodes[0])


def test_split_deterministic(tmp_path):
  store, _ = make_store(str(tmp_path / "s"), [2] * 20)
  train, evals = store.split()
  assert len(train) == 18 and len(evals) == 2
  assert set(train).isdisjoint(evals) and set(train) | set(evals) == set(range(20))
  np.testing.assert_array_equal(store.split()[1], evals)
  assert not np.array_equal(store.split(seed=1)[1], evals)
  small, _ = make_store(str(tmp_path / "t"), [2, 2])
  assert [len(x) for x in small.split()] == [1, 1]


def test_extra_array(tmp_path):
  path = str(tmp_path / "s")
  store, _ = make_store(path, [5, 6])
  store.add_array("latents", (4, 2), np.float32, {"tokenizer": "ckpt/100"})
  latents = np.arange(11 * 8, dtype=np.float32).reshape(11, 4, 2)
  store.write("latents", 0, latents)
  store.append(**episode(2, 3))
  reader = EpisodeStore.open(path)
  assert reader.metadata["extra_arrays"]["latents"]["attrs"] == {"tokenizer": "ckpt/100"}
  np.testing.assert_array_equal(reader.read("latents", 0, 11), latents)
  np.testing.assert_array_equal(reader.read("latents", 11, 14), np.zeros((3, 4, 2)))  # unwritten rows
  assert reader.read_episode(1)["latents"].shape == (6, 4, 2)
  with pytest.raises(StoreError, match="only arrays added with add_array"):
    store.write("frames", 0, np.zeros((1,) + FRAME, np.uint8))


def test_missing_metadata(tmp_path):
  path = str(tmp_path / "s")
  make_store(path, [3])
  os.remove(os.path.join(path, "metadata.json"))
  with pytest.raises(StoreError, match=r"dataset .*/s: metadata.json is missing; this is not an EpisodeStore"):
    EpisodeStore.open(path)
  with pytest.raises(StoreError, match="metadata.json is missing"):
    EpisodeStore.open(str(tmp_path / "nothing_here"))


def test_unknown_schema_version(tmp_path):
  path = str(tmp_path / "s")
  make_store(path, [3])
  meta_path = os.path.join(path, "metadata.json")
  meta = json.load(open(meta_path))
  meta["schema_version"] = 99
  json.dump(meta, open(meta_path, "w"))
  with pytest.raises(StoreError, match="schema_version 99"):
    EpisodeStore.open(path)


def test_wrong_dtype(tmp_path):
  path = str(tmp_path / "s")
  make_store(path, [3])
  ts.open(
    {
      "driver": "zarr3",
      "kvstore": {"driver": "file", "path": os.path.join(path, "frames")},
      "metadata": {"shape": [3, *FRAME], "data_type": "int16"},
    },
    create=True,
    delete_existing=True,
  ).result()
  with pytest.raises(
    StoreError,
    match=r"dataset .*: array 'frames' has dtype int16, expected uint8; re-create it with "
    r"python -m data_pipelines.collect",
  ):
    EpisodeStore.open(path)


def test_offsets_not_increasing(tmp_path):
  path = str(tmp_path / "s")
  make_store(path, [3, 4, 5])
  arr = ts.open(
    {"driver": "zarr3", "kvstore": {"driver": "file", "path": os.path.join(path, "episode_offsets")}}
  ).result()
  arr[0:4].write(np.array([0, 7, 7, 12], np.int64)).result()
  with pytest.raises(StoreError, match="array 'episode_offsets' is not strictly increasing at episode 1"):
    EpisodeStore.open(path)


def test_commit_inconsistent(tmp_path):
  path = str(tmp_path / "s")
  make_store(path, [3, 4])
  json.dump({"num_episodes": 2, "num_frames": 8}, open(os.path.join(path, "commit.json"), "w"))
  with pytest.raises(StoreError, match="array 'episode_offsets' ends at 7 but commit.json has num_frames=8"):
    EpisodeStore.open(path)


def test_corrupt_chunk_names_array_and_range(tmp_path):
  path = str(tmp_path / "s")
  make_store(path, [20])
  shard = os.path.join(path, "frames", "c", "0", "0", "0", "0")
  size = os.path.getsize(shard)
  with open(shard, "r+b") as f:
    f.write(b"\xff" * size)
  store = EpisodeStore.open(path)  # the frames array is only read lazily
  with pytest.raises(
    StoreError,
    match=r"array 'frames', episode 0 / frames 2:9 \(rows \[2, 9\) under .*/s/frames\) "
    r"could not be read, a chunk may be corrupt",
  ):
    store.read("frames", 2, 9)


def test_append_many_one_commit(tmp_path):
  path = str(tmp_path / "s")
  store, first = make_store(path, [4])
  batch = [episode(e, n) for e, n in ((1, 3), (2, 8), (3, 1))]
  assert store.append_many(batch) == [1, 2, 3]
  reader = EpisodeStore.open(path)
  np.testing.assert_array_equal(reader.episode_offsets, [0, 4, 7, 15, 16])
  for i, ep in enumerate(first + batch):
    _assert_episode_equal(reader.read_episode(i), ep)
  bad = [episode(4, 2), dict(episode(5, 2), rewards_T=np.zeros(5))]
  with pytest.raises(StoreError, match=r"rewards has shape \[5\], expected \[2\]"):
    store.append_many(bad)
  assert EpisodeStore.open(path).num_episodes == 4  # all or nothing
