"""The store's root zarr.json: zarr-python opens a store as a group; older stores without it still work."""

import json
import os

import numpy as np
import pytest
import zarr

from data_pipelines.collect import CollectError, collect
from data_pipelines.episodes import EpisodeStore, StoreError
from tests.data_pipelines.helpers import episode, make_store

# Listing the group names metadata.json and commit.json, which are no zarr nodes.
pytestmark = pytest.mark.filterwarnings("ignore:Object at .* is not recognized")


def _json(path, key):
  with open(os.path.join(path, key)) as f:
    return json.load(f)


def _snapshot(path):
  out = {}
  for root, _, files in os.walk(path):
    for name in files:
      p = os.path.join(root, name)
      out[p] = (os.stat(p).st_mtime_ns, open(p, "rb").read())
  return out


def _assert_zarr_reads_equal(path, store):
  """Every committed row of every array, read by zarr-python, equals EpisodeStore's read."""
  group = zarr.open_group(path, mode="r")
  assert sorted(group.array_keys()) == sorted(store.array_names)
  for name in store.array_names:
    stop = store.num_episodes + 1 if name == "episode_offsets" else store.num_frames
    np.testing.assert_array_equal(group[name][:stop], store.read(name, 0, stop), err_msg=name)


def test_zarr_opens_a_collected_store(tmp_path):
  path = str(tmp_path / "s")
  collect("toy", path, episodes=3, seed=0, skills=(1.0,), size=16, append=False, max_steps=20)
  store = EpisodeStore.open(path)
  root = _json(path, "zarr.json")
  assert root["zarr_format"] == 3 and root["node_type"] == "group"
  group = zarr.open_group(path, mode="r")
  assert sorted(group.array_keys()) == sorted(
    ["frames", "actions_discrete", "action_labelled", "rewards", "tasks", "episode_offsets"]
  )
  assert dict(group.attrs) == _json(path, "metadata.json") == store.metadata
  stop = int(store.episode_offsets[1])
  first = store.read_episode(0)
  frames = group["frames"]
  assert type(frames.metadata.codecs[0]).__name__ == "ShardingCodec"  # the sharded layout is what was decoded
  np.testing.assert_array_equal(frames[:stop], first["frames"])
  np.testing.assert_array_equal(group["actions_discrete"][:stop], first["actions_discrete"])
  assert frames.dtype == np.uint8 and group["actions_discrete"].dtype == np.int32
  _assert_zarr_reads_equal(path, store)


def test_zarr_decodes_frames_across_shards(tmp_path):
  path = str(tmp_path / "s")
  store, episodes = make_store(path, [600, 900, 7])  # episode 1 spans the 1024-frame shard boundary
  group = zarr.open_group(path, mode="r")
  off = store.episode_offsets
  np.testing.assert_array_equal(group["frames"][off[1] : off[2]], episodes[1]["frames_THWC"])
  _assert_zarr_reads_equal(path, store)


def test_commit_json_stays_the_last_write(tmp_path, monkeypatch):
  keys = []
  real = EpisodeStore._write_json
  monkeypatch.setattr(EpisodeStore, "_write_json", lambda self, key, value: (keys.append(key), real(self, key, value)))
  path = str(tmp_path / "s")
  store, _ = make_store(path, [3, 4])
  assert keys == ["metadata.json", "zarr.json", "commit.json", "commit.json", "commit.json"]
  os.remove(os.path.join(path, "zarr.json"))
  keys.clear()
  EpisodeStore.open(path, "a").append(**episode(2, 5))
  assert keys == ["zarr.json", "commit.json"]  # an older store gains zarr.json before the commit
  assert store.num_episodes == 2  # (the first handle is unaffected)


def test_group_attributes_follow_metadata_changes(tmp_path):
  path = str(tmp_path / "s")
  make_store(path, [5, 6])
  store = EpisodeStore.open(path, "a")
  store.add_array("latents", (2,), np.float16, attrs={"ckpt": 1})
  assert dict(zarr.open_group(path, mode="r").attrs) == _json(path, "metadata.json")
  values = np.arange(22, dtype=np.float16).reshape(11, 2)
  store.write("latents", 0, values)
  store.set_array_attrs("latents", {"ckpt": 1, "complete": True})
  group = zarr.open_group(path, mode="r")
  assert dict(group.attrs) == _json(path, "metadata.json")
  assert group.attrs["extra_arrays"]["latents"]["attrs"] == {"ckpt": 1, "complete": True}
  np.testing.assert_array_equal(group["latents"][:11], values)
  _assert_zarr_reads_equal(path, EpisodeStore.open(path))


def test_store_without_zarr_json_still_opens_and_first_write_adds_it(tmp_path):
  path = str(tmp_path / "s")
  _, episodes = make_store(path, [5, 6])
  os.remove(os.path.join(path, "zarr.json"))  # as written before zarr.json existed
  with pytest.raises(FileNotFoundError, match="No group found"):  # the problem this file fixes
    zarr.open_group(path, mode="r")
  store = EpisodeStore.open(path)
  assert store.num_episodes == 2
  np.testing.assert_array_equal(store.read_episode(1)["frames"], episodes[1]["frames_THWC"])
  writer = EpisodeStore.open(path, "a")
  assert not os.path.exists(os.path.join(path, "zarr.json"))  # opening writes nothing
  writer.append(**episode(2, 4))
  assert dict(zarr.open_group(path, mode="r").attrs) == _json(path, "metadata.json")
  _assert_zarr_reads_equal(path, EpisodeStore.open(path))


def test_malformed_zarr_json_is_ignored_by_readers_and_replaced_by_writers(tmp_path):
  path = str(tmp_path / "s")
  make_store(path, [5])
  with open(os.path.join(path, "zarr.json"), "w") as f:
    f.write("{not json")
  assert EpisodeStore.open(path).num_episodes == 1
  EpisodeStore.open(path, "a").append(**episode(1, 3))
  assert dict(zarr.open_group(path, mode="r").attrs) == _json(path, "metadata.json")


def test_attributes_added_with_zarr_are_kept(tmp_path):
  path = str(tmp_path / "s")
  make_store(path, [5])
  zarr.open_group(path, mode="r+").attrs["note"] = "hand-labelled subset"
  store = EpisodeStore.open(path, "a")
  store.add_array("latents", (2,), np.float32)
  attrs = dict(zarr.open_group(path, mode="r").attrs)
  assert attrs.pop("note") == "hand-labelled subset"
  assert attrs == _json(path, "metadata.json") and "latents" in attrs["extra_arrays"]


def test_bad_input_writes_nothing_on_an_older_store(tmp_path):
  path, collected = str(tmp_path / "s"), str(tmp_path / "c")
  make_store(path, [5])
  collect("toy", collected, episodes=2, seed=0, skills=(1.0,), size=16, append=False, max_steps=20)
  for p in (path, collected):
    os.remove(os.path.join(p, "zarr.json"))  # as written before zarr.json existed
  before = _snapshot(tmp_path)
  store = EpisodeStore.open(path, "a")
  bad = episode(0, 3)
  bad["frames_THWC"] = bad["frames_THWC"][:, :4]
  with pytest.raises(StoreError, match="append: frames has shape"):
    store.append(**bad)
  with pytest.raises(StoreError, match="unknown array 'nope'"):
    store.append(**episode(0, 3), extra={"nope": np.zeros((3,))})
  with pytest.raises(CollectError, match="--append: .* holds env 'toy' with frames"):
    collect("toy", collected, episodes=1, seed=0, skills=(0.5,), size=32, append=True)
  assert _snapshot(tmp_path) == before
  with pytest.raises(StoreError, match="metadata.json is missing"):
    EpisodeStore.open(str(tmp_path / "empty"))
