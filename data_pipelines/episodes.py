"""EpisodeStore: append-only episodes in TensorStore zarr3 arrays, with an atomic commit.

No jax here: Grain workers and the collector import this module.

Layout under the store's kvstore prefix (a local directory, `file://`, `memory://`,
`gs://`, ... anything TensorStore's kvstore understands):

  metadata.json            {schema_version, env, fps, frame_shape, action_spec,
                            task_names, created_by, extra_arrays}; what readers use
  zarr.json                zarr v3 root group whose attributes mirror metadata.json, so
                           zarr-aware tools (zarr.open_group) see one dataset; see below
  commit.json              {num_episodes, num_frames}; the only source of truth
                           for what readers may see; written LAST on every append
  frames/                  [N, H, W, C] uint8   sharded: 1024-frame shards, 16-frame chunks, zstd
  actions_discrete/        [N, Ad] int32        (only if Ad > 0)
  actions_continuous/      [N, Ac] float32      (only if Ac > 0)
  action_labelled/         [N] bool
  rewards/                 [N] float32
  tasks/                   [N] int32
  episode_offsets/         [E + 1] int64        episode e is frames [off[e], off[e+1])
  <extra>/                 [N, ...] per-frame arrays added later (e.g. tokenizer latents)

Growth: arrays are created with length 0 and grown with TensorStore `resize`
(metadata only, geometric growth so zarr.json is rewritten rarely). An array may
therefore be longer than the committed count; rows past commit.json are garbage
from an unfinished append and are overwritten by the next one.

Atomicity: `append` writes every array (and the new episode offset), waits for
all writes, and only then replaces commit.json (a single-key kvstore write,
which is atomic on file and object stores). A crash at any point before that
leaves readers, and the next writer, at the previous commit.

Concurrency: one writer at a time per store; any number of readers. Readers see
the commit that was current when they opened or last called `refresh()`.

Root group: `create` writes zarr.json (before commit.json) and every metadata change
rewrites it right after metadata.json. It never holds the committed counts: written
before commit.json it could announce episodes a crash leaves uncommitted, and after it
commit.json would no longer be the last write. zarr tools therefore see the arrays at
their allocated length; rows at or past commit.json's num_frames (num_episodes + 1 for
episode_offsets) are not data. Stores written before zarr.json existed open as before;
the first write through a mode "a" handle (append, add_array, set_array_attrs, write)
adds it, never `open` itself, so a failed `collect --append` still changes nothing.
Attributes that a zarr tool added to the group under other keys are kept.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from data_pipelines.envs.base import ActionSpec
from data_pipelines.errors import DataError

SCHEMA_VERSION = 1
SHARD_FRAMES = 1024  # frames per shard file along N
CHUNK_FRAMES = 16  # frames per compressed inner chunk (the read unit)
SMALL_CHUNK = 4096  # rows per chunk of the small per-frame and per-episode arrays
MIN_CAPACITY = 1024  # first allocation along N; then doubled as needed
FIX_HINT = "re-create it with python -m data_pipelines.collect"

# Arrays every store has; their trailing shape depends on metadata (see _expected_arrays).
CORE_ARRAYS = ("frames", "actions_discrete", "actions_continuous", "action_labelled", "rewards", "tasks")
OFFSETS = "episode_offsets"
GROUP = "zarr.json"  # the root group's metadata document

_context_lock = threading.Lock()
_shared_context = None


class StoreError(DataError):
  """A missing, incompatible or corrupt EpisodeStore; the message is one line saying what to do."""


def _ts():
  # Imported lazily so `import data_pipelines.episodes` does no work, and so a
  # process that only forks (never opens a store) never loads tensorstore.
  import tensorstore as ts  # pylint: disable=g-import-not-at-top

  return ts


def _context():
  """One TensorStore context per process: `memory://` stores live in it, so every
  handle in the process must share it to see the same data. No chunk cache:
  readers must never serve data from before a later commit."""
  global _shared_context
  with _context_lock:
    if _shared_context is None:
      _shared_context = _ts().Context({"cache_pool": {"total_bytes_limit": 0}})
    return _shared_context


def kvstore_spec(path: str) -> dict[str, Any]:
  """The kvstore JSON spec of a store location, ending in "/".

  A plain path (relative or absolute) becomes a `file` kvstore; anything with a
  "scheme://" is passed to TensorStore as a kvstore URL.
  """
  path = os.fspath(path)
  if "://" not in path:
    return {"driver": "file", "path": os.path.abspath(path).rstrip("/") + "/"}
  return _ts().KvStore.Spec(path.rstrip("/") + "/").to_json()


def _sub(base: dict[str, Any], name: str) -> dict[str, Any]:
  return dict(base, path=base.get("path", "") + name + "/")


def _array_metadata(trailing: Sequence[int], dtype: np.dtype, per_frame_sharded: bool) -> dict[str, Any]:
  """zarr3 metadata for an array of shape [0, *trailing] that grows along axis 0."""
  trailing = [int(t) for t in trailing]
  # zarr3 forbids an endianness on single-byte types.
  to_bytes = (
    {"name": "bytes"} if np.dtype(dtype).itemsize == 1 else {"name": "bytes", "configuration": {"endian": "little"}}
  )
  zstd = [to_bytes, {"name": "zstd", "configuration": {"level": 3}}]
  if per_frame_sharded:
    # Shards keep the file count low (one per 1024 frames); inner chunks keep a
    # 16-frame window read from decoding more than it needs.
    chunk_grid = [SHARD_FRAMES] + trailing
    codecs = [
      {
        "name": "sharding_indexed",
        "configuration": {
          "chunk_shape": [CHUNK_FRAMES] + trailing,
          "codecs": zstd,
          "index_codecs": [{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "crc32c"}],
        },
      }
    ]
  else:
    chunk_grid = [SMALL_CHUNK] + trailing
    codecs = zstd
  return {
    "shape": [0] + trailing,
    "data_type": np.dtype(dtype).name,
    "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": chunk_grid}},
    "codecs": codecs,
  }


def _castable(src: np.dtype, dst: np.dtype) -> bool:
  """Whether append may convert src to dst: within the same kind, or bool/int into int."""
  if np.can_cast(src, dst, casting="same_kind"):
    return True
  return src.kind in "biu" and dst.kind in "biu"


def _one_line(err: Exception) -> str:
  return " ".join(str(err).split())[:300]


class EpisodeStore:
  """Reader and append-only writer of one episode dataset.

  Build with `EpisodeStore.create(...)` or `EpisodeStore.open(...)`, not the constructor.
  """

  def __init__(self, path: str, kvstore: dict[str, Any], mode: str):
    self._path = os.fspath(path)
    self._kv_spec = kvstore
    self._mode = mode
    self._kv = _ts().KvStore.open(kvstore, context=_context()).result()
    self._arrays: dict[str, Any] = {}
    self._metadata: dict[str, Any] = {}
    self._num_episodes = 0
    self._num_frames = 0
    self._offsets = np.zeros((1,), np.int64)
    self._group_doc: dict[str, Any] | None = None  # zarr.json as last read or written; None: not yet read
    self._group_foreign: dict[str, Any] = {}  # group attributes under keys that metadata.json lacks

  # ------------------------------------------------------------------ creation

  @classmethod
  def create(
    cls,
    path: str,
    *,
    env: str,
    frame_shape: Sequence[int],
    action_spec: ActionSpec,
    task_names: Sequence[str],
    fps: int,
    created_by: str = "data_pipelines.episodes",
  ) -> EpisodeStore:
    """Creates an empty store (metadata, empty arrays, commit of 0 episodes).

    Args:
      path: directory or TensorStore kvstore URL; nothing may exist there yet.
      env: source env name (metadata only).
      frame_shape: (H, W, C) of the uint8 frames.
      action_spec: the env's ActionSpec; decides which action arrays exist.
      task_names: task ids index this tuple.
      fps: nominal frames per second (metadata only).
      created_by: free text recorded in metadata.json.

    Returns:
      The store, open for appending.

    Raises:
      StoreError: if anything already exists at `path`.
    """
    store = cls(path, kvstore_spec(path), "a")
    if store._kv.list().result():
      raise StoreError(
        f"dataset {path}: refusing to create a store where files already exist; "
        "choose an empty location, or append to it (collect --append)"
      )
    frame_shape = tuple(int(s) for s in frame_shape)
    if len(frame_shape) != 3 or min(frame_shape) < 1:
      raise StoreError(f"dataset {path}: frame_shape must be (H, W, C) with positive sizes, got {frame_shape}")
    store._metadata = {
      "schema_version": SCHEMA_VERSION,
      "env": env,
      "fps": int(fps),
      "frame_shape": list(frame_shape),
      "action_spec": action_spec.to_json(),
      "task_names": list(task_names),
      "created_by": created_by,
      "extra_arrays": {},
    }
    ts = _ts()
    try:
      for name, (trailing, dtype, sharded) in store._expected_arrays().items():
        spec = {
          "driver": "zarr3",
          "kvstore": _sub(store._kv_spec, name),
          "metadata": _array_metadata(trailing, dtype, sharded),
        }
        store._arrays[name] = ts.open(spec, create=True, context=_context()).result()
      store._arrays[OFFSETS] = (
        store._arrays[OFFSETS].resize(exclusive_max=[SMALL_CHUNK], expand_only=True, resize_metadata_only=True).result()
      )
      store._arrays[OFFSETS][0:1].write(np.zeros((1,), np.int64)).result()
      store._write_json("metadata.json", store._metadata)
      store._group_doc = {}  # nothing there yet (checked above)
      store._sync_group()
      # The commit goes last: a store without commit.json is visibly unfinished.
      store._write_json("commit.json", {"num_episodes": 0, "num_frames": 0})
    except ValueError as e:
      store._fail(f"cannot create the store ({_one_line(e)}); check that the location is writable")
    return store

  @classmethod
  def open(cls, path: str, mode: str = "r") -> EpisodeStore:
    """Opens and validates an existing store.

    Args:
      path: directory or TensorStore kvstore URL.
      mode: "r" (read only) or "a" (read and append).

    Raises:
      StoreError: if the store is missing, of an unknown schema, or inconsistent.
    """
    if mode not in ("r", "a"):
      raise ValueError(f"EpisodeStore.open: mode must be 'r' or 'a', got {mode!r}")
    store = cls(path, kvstore_spec(path), mode)
    store._load()
    return store

  def _load(self):
    meta = self._read_json(
      "metadata.json", what="this is not an EpisodeStore; create one with python -m data_pipelines.collect"
    )
    if meta.get("schema_version") != SCHEMA_VERSION:
      self._fail(
        f"metadata.json has schema_version {meta.get('schema_version')!r}, this code reads "
        f"{SCHEMA_VERSION}; {FIX_HINT} or use a matching version of dreamer4-jax"
      )
    for key in ("env", "fps", "frame_shape", "action_spec", "task_names"):
      if key not in meta:
        self._fail(f"metadata.json lacks the key {key!r}; {FIX_HINT}")
    try:
      ActionSpec.from_json(meta["action_spec"])
    except (KeyError, TypeError, ValueError) as e:
      self._fail(f"metadata.json has an invalid action_spec ({_one_line(e)}); {FIX_HINT}")
    meta.setdefault("extra_arrays", {})
    self._metadata = meta
    self._open_arrays()
    self.refresh()

  def _open_arrays(self):
    ts = _ts()
    self._arrays = {}
    for name, (trailing, dtype, _) in self._expected_arrays().items():
      spec = {"driver": "zarr3", "kvstore": _sub(self._kv_spec, name)}
      try:
        arr = ts.open(spec, open=True, read=True, write=self._mode == "a", context=_context()).result()
      except ValueError as e:
        self._fail(f"array {name!r} is missing or unreadable ({_one_line(e)}); {FIX_HINT}")
      got = np.dtype(arr.dtype.numpy_dtype)
      if got != np.dtype(dtype):
        self._fail(f"array {name!r} has dtype {got}, expected {np.dtype(dtype)}; {FIX_HINT}")
      if tuple(arr.shape[1:]) != tuple(trailing):
        want = ", ".join(["N"] + [str(s) for s in trailing])
        self._fail(f"array {name!r} has shape {list(arr.shape)}, expected [{want}] as in metadata.json; {FIX_HINT}")
      self._arrays[name] = arr

  def refresh(self) -> None:
    """Re-reads commit.json (and the episode offsets) to see episodes appended since opening."""
    commit = self._read_json("commit.json", what=f"the store was never committed; {FIX_HINT}")
    try:
      num_episodes, num_frames = int(commit["num_episodes"]), int(commit["num_frames"])
    except (KeyError, TypeError, ValueError):
      self._fail(f"commit.json is malformed ({commit!r}); {FIX_HINT}")
    if num_episodes < 0 or num_frames < 0:
      self._fail(f"commit.json has negative counts ({commit!r}); {FIX_HINT}")
    for name, arr in self._arrays.items():
      need = num_episodes + 1 if name == OFFSETS else num_frames
      if arr.shape[0] < need:
        # A handle opened before a writer grew the array: reopen to see the new shape.
        arr = (
          _ts()
          .open(
            {"driver": "zarr3", "kvstore": _sub(self._kv_spec, name)},
            open=True,
            read=True,
            write=self._mode == "a",
            context=_context(),
          )
          .result()
        )
        self._arrays[name] = arr
      if arr.shape[0] < need:
        self._fail(f"array {name!r} has {arr.shape[0]} rows but commit.json promises {need}; {FIX_HINT}")
    offsets = self._read_raw(OFFSETS, 0, num_episodes + 1).astype(np.int64)
    if offsets[0] != 0:
      self._fail(f"array 'episode_offsets' starts at {offsets[0]}, expected 0; {FIX_HINT}")
    if np.any(np.diff(offsets) <= 0):
      bad = int(np.flatnonzero(np.diff(offsets) <= 0)[0])
      self._fail(
        f"array 'episode_offsets' is not strictly increasing at episode {bad} "
        f"({offsets[bad]} -> {offsets[bad + 1]}); {FIX_HINT}"
      )
    if offsets[-1] != num_frames:
      self._fail(
        f"array 'episode_offsets' ends at {offsets[-1]} but commit.json has num_frames={num_frames}; {FIX_HINT}"
      )
    self._num_episodes, self._num_frames, self._offsets = num_episodes, num_frames, offsets

  # ------------------------------------------------------------------ schema

  def _expected_arrays(self) -> dict[str, tuple[tuple[int, ...], np.dtype, bool]]:
    """name -> (trailing shape, dtype, sharded) of every array this store must have."""
    spec = self.action_spec
    out = {"frames": (tuple(self.frame_shape), np.dtype(np.uint8), True)}
    if spec.discrete_columns:
      out["actions_discrete"] = ((spec.discrete_columns,), np.dtype(np.int32), False)
    if spec.continuous_columns:
      out["actions_continuous"] = ((spec.continuous_columns,), np.dtype(np.float32), False)
    out["action_labelled"] = ((), np.dtype(np.bool_), False)
    out["rewards"] = ((), np.dtype(np.float32), False)
    out["tasks"] = ((), np.dtype(np.int32), False)
    out[OFFSETS] = ((), np.dtype(np.int64), False)
    for name, info in self._metadata.get("extra_arrays", {}).items():
      out[name] = (tuple(info["trailing_shape"]), np.dtype(info["dtype"]), True)
    return out

  # ------------------------------------------------------------------ properties

  @property
  def path(self) -> str:
    return self._path

  @property
  def metadata(self) -> dict[str, Any]:
    return json.loads(json.dumps(self._metadata))  # a copy: callers must not edit ours

  @property
  def frame_shape(self) -> tuple[int, int, int]:
    return tuple(self._metadata["frame_shape"])

  @property
  def action_spec(self) -> ActionSpec:
    return ActionSpec.from_json(self._metadata["action_spec"])

  @property
  def task_names(self) -> tuple[str, ...]:
    return tuple(self._metadata["task_names"])

  @property
  def num_episodes(self) -> int:
    return self._num_episodes

  @property
  def num_frames(self) -> int:
    return self._num_frames

  @property
  def episode_offsets(self) -> np.ndarray:
    return self._offsets.copy()

  @property
  def episode_lengths(self) -> np.ndarray:
    return np.diff(self._offsets)

  @property
  def array_names(self) -> tuple[str, ...]:
    """Every stored array, per-frame and per-episode."""
    return tuple(self._arrays)

  # ------------------------------------------------------------------ reading

  def read(self, name: str, start: int, stop: int) -> np.ndarray:
    """Reads rows [start, stop) of a committed array (frames along N, or episode_offsets)."""
    return self.read_many((name,), start, stop)[name]

  def read_many(self, names: Sequence[str], start: int, stop: int) -> dict[str, np.ndarray]:
    """Reads rows [start, stop) of several per-frame arrays, issuing the reads concurrently."""
    futures = {}
    for name in names:
      self._check_range(name, start, stop)
      futures[name] = self._arrays[name][start:stop].read()
    out = {}
    for name, fut in futures.items():
      try:
        out[name] = fut.result()
      except Exception as e:  # pylint: disable=broad-except
        self._fail_read(name, start, stop, e)
    return out

  def read_episode(self, i: int) -> dict[str, np.ndarray]:
    """Every per-frame array of episode i (extra arrays included), keyed by array name."""
    if not 0 <= i < self._num_episodes:
      raise IndexError(f"dataset {self._path}: episode {i} out of range [0, {self._num_episodes})")
    names = [n for n in self._arrays if n != OFFSETS]
    return self.read_many(names, int(self._offsets[i]), int(self._offsets[i + 1]))

  def _check_range(self, name: str, start: int, stop: int):
    if name not in self._arrays:
      raise KeyError(f"dataset {self._path}: no array {name!r}; it has {', '.join(self._arrays)}")
    limit = self._num_episodes + 1 if name == OFFSETS else self._num_frames
    if not 0 <= start <= stop <= limit:
      raise IndexError(
        f"dataset {self._path}: rows [{start}, {stop}) of {name!r} are outside the committed range [0, {limit})"
      )

  def _read_raw(self, name: str, start: int, stop: int) -> np.ndarray:
    try:
      return self._arrays[name][start:stop].read().result()
    except Exception as e:  # pylint: disable=broad-except
      self._fail_read(name, start, stop, e)

  def _rows_where(self, name: str, start: int, stop: int) -> str:
    """Which episodes rows [start, stop) of an array belong to, e.g. "episode 3 / frames 2:9"."""
    if name == OFFSETS:
      return f"episode offsets {start}:{stop}"
    off = self._offsets
    if stop <= start or stop > off[-1]:
      return f"frames {start}:{stop}"
    first = int(np.searchsorted(off, start, side="right")) - 1
    last = int(np.searchsorted(off, stop - 1, side="right")) - 1
    if first == last:
      return f"episode {first} / frames {start - off[first]}:{stop - off[first]}"
    return f"episodes {first}-{last} / frames {start}:{stop} of the store"

  def _fail_read(self, name: str, start: int, stop: int, err: Exception):
    where = os.path.join(self._path, name) if "://" not in self._path else f"{self._path.rstrip('/')}/{name}"
    self._fail(
      f"array {name!r}, {self._rows_where(name, start, stop)} (rows [{start}, {stop}) under {where}) "
      f"could not be read, a chunk may be corrupt ({_one_line(err)}); {FIX_HINT}"
    )

  def split(self, eval_fraction: float = 0.1, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic split of episode ids into (train_ids, eval_ids), each sorted.

    The eval share is round(eval_fraction * E), clipped to [1, E - 1] when E >= 2
    so both sides are non-empty; with E == 1 the single episode is train.
    """
    if not 0.0 <= eval_fraction < 1.0:
      raise ValueError(f"split: eval_fraction must be in [0, 1), got {eval_fraction}")
    e = self._num_episodes
    n_eval = int(round(eval_fraction * e))
    if e >= 2:
      n_eval = min(max(n_eval, 1), e - 1)
    else:
      n_eval = 0
    perm = np.random.default_rng(seed).permutation(e)
    return np.sort(perm[n_eval:]).astype(np.int64), np.sort(perm[:n_eval]).astype(np.int64)

  # ------------------------------------------------------------------ writing

  def append(
    self,
    frames_THWC: np.ndarray,
    actions_discrete_TA: np.ndarray | None,
    rewards_T: np.ndarray,
    tasks_T: np.ndarray,
    action_labelled_T: np.ndarray,
    actions_continuous_TA: np.ndarray | None = None,
    extra: dict[str, np.ndarray] | None = None,
  ) -> int:
    """Appends one episode of T frames and commits it; returns its episode index.

    Args:
      frames_THWC: uint8 [T, H, W, C] with (H, W, C) = frame_shape.
      actions_discrete_TA: int [T, Ad] (None when the spec has no discrete columns).
      rewards_T: float [T]; reward of the transition that led to frame t.
      tasks_T: int [T]; task id per frame.
      action_labelled_T: bool [T]; False where the action is unknown (episode start).
      actions_continuous_TA: float [T, Ac] (None when the spec has no continuous columns).
      extra: optional rows of extra arrays (see add_array); missing ones stay zero.

    Raises:
      StoreError: if the store is read-only or an input disagrees with the metadata.
    """
    return self.append_many(
      [
        dict(
          frames_THWC=frames_THWC,
          actions_discrete_TA=actions_discrete_TA,
          rewards_T=rewards_T,
          tasks_T=tasks_T,
          action_labelled_T=action_labelled_T,
          actions_continuous_TA=actions_continuous_TA,
          extra=extra,
        )
      ]
    )[0]

  def append_many(self, episodes: Sequence[dict[str, Any]]) -> list[int]:
    """Appends several episodes (each a dict of `append`'s arguments) under ONE commit.

    Cheaper than one `append` per episode: each commit rewrites the partly filled
    shard and syncs files, so a collector batching about a shard of frames per
    commit is several times faster. All or none of the episodes become visible.

    Returns:
      The new episodes' indices.
    """
    if self._mode != "a":
      raise StoreError(f"dataset {self._path}: opened read-only; open it with mode='a' to append")
    if not episodes:
      return []
    per_episode = [self._episode_rows(**ep) for ep in episodes]
    lengths = [rows["frames"].shape[0] for rows in per_episode]
    rows = {name: np.concatenate([r[name] for r in per_episode]) for name in per_episode[0]}
    for name in {n for r in per_episode for n in r} - set(rows):
      self._fail(f"append: extra array {name!r} must be given for every episode of one append_many call")
    self._sync_group()  # a no-op unless the store predates zarr.json; before the commit below
    start, e = self._num_frames, self._num_episodes
    new_offsets = start + np.cumsum(lengths, dtype=np.int64)
    stop, new_e = int(new_offsets[-1]), e + len(episodes)
    self._grow(stop, new_e + 1)
    # Arrays are independent keys, so their writes run concurrently; the commit
    # below waits for every one of them first.
    futures = [self._arrays[name][start:stop].write(x) for name, x in rows.items()]
    futures.append(self._arrays[OFFSETS][e + 1 : new_e + 1].write(new_offsets))
    for f in futures:
      f.result()
    self._write_json("commit.json", {"num_episodes": new_e, "num_frames": stop})
    self._num_episodes, self._num_frames = new_e, stop
    self._offsets = np.concatenate([self._offsets, new_offsets])
    return list(range(e, new_e))

  def _episode_rows(
    self,
    frames_THWC,
    actions_discrete_TA,
    rewards_T,
    tasks_T,
    action_labelled_T,
    actions_continuous_TA=None,
    extra=None,
  ) -> dict[str, np.ndarray]:
    """Validates one episode against the metadata; returns name -> rows in the stored dtype."""
    frames_THWC = np.asarray(frames_THWC)
    if frames_THWC.ndim != 4 or frames_THWC.shape[0] < 1:
      self._fail(f"append: frames must be [T, H, W, C] with T >= 1, got shape {list(frames_THWC.shape)}")
    t = frames_THWC.shape[0]
    given = {
      "frames": frames_THWC,
      "actions_discrete": actions_discrete_TA,
      "actions_continuous": actions_continuous_TA,
      "action_labelled": action_labelled_T,
      "rewards": rewards_T,
      "tasks": tasks_T,
    }
    given.update(extra or {})
    rows = {}
    for name, (trailing, dtype, _) in self._expected_arrays().items():
      if name == OFFSETS:
        continue
      x = given.get(name)
      if x is None:
        if name in self._metadata["extra_arrays"]:
          continue
        self._fail(f"append: {name} is required by the action spec {self.action_spec.to_json()}")
      x = np.asarray(x)
      if x.shape != (t,) + tuple(trailing):
        self._fail(f"append: {name} has shape {list(x.shape)}, expected {[t, *trailing]}")
      if not _castable(x.dtype, dtype) or (name == "frames" and x.dtype != np.uint8):
        self._fail(f"append: {name} has dtype {x.dtype}, expected {dtype}")
      rows[name] = x.astype(dtype, copy=False)
    for name, x in given.items():
      if x is not None and name in ("actions_discrete", "actions_continuous") and name not in rows:
        self._fail(f"append: {name} given but the action spec has no such columns")
      if x is not None and name not in rows and name not in CORE_ARRAYS:
        self._fail(f"append: unknown array {name!r}; add it first with add_array")
    return rows

  def _grow(self, frames_needed: int, offsets_needed: int):
    """Resizes arrays (metadata only) so they hold the next append; doubles to amortise."""
    for name, arr in self._arrays.items():
      need = offsets_needed if name == OFFSETS else frames_needed
      if arr.shape[0] < need:
        new = max(need, 2 * arr.shape[0], MIN_CAPACITY)
        self._arrays[name] = arr.resize(
          exclusive_max=[new] + [None] * (arr.rank - 1), expand_only=True, resize_metadata_only=True
        ).result()

  def add_array(
    self,
    name: str,
    trailing_shape: Sequence[int],
    dtype: Any,
    attrs: dict[str, Any] | None = None,
    overwrite: bool = False,
  ):
    """Adds a per-frame array [N, *trailing_shape] (e.g. tokenizer latents) next to frames.

    Existing rows read as zeros until written with `write`. `attrs` (JSON) is kept
    in metadata.json, e.g. the checkpoint that produced the latents.
    """
    if self._mode != "a":
      raise StoreError(f"dataset {self._path}: opened read-only; open it with mode='a' to add arrays")
    if overwrite and name in self._metadata["extra_arrays"]:
      self._arrays.pop(name, None)  # replaced below (delete_existing); e.g. latents of a new tokenizer
    if name in self._arrays or name in CORE_ARRAYS or not name.replace("_", "").isalnum():
      raise StoreError(f"dataset {self._path}: cannot add array {name!r}: the name is taken or not alphanumeric")
    dtype = np.dtype(dtype)
    trailing = [int(s) for s in trailing_shape]
    spec = {"driver": "zarr3", "kvstore": _sub(self._kv_spec, name), "metadata": _array_metadata(trailing, dtype, True)}
    arr = _ts().open(spec, create=True, delete_existing=True, context=_context()).result()
    capacity = self._arrays["frames"].shape[0]
    if capacity:
      arr = arr.resize(
        exclusive_max=[capacity] + [None] * len(trailing), expand_only=True, resize_metadata_only=True
      ).result()
    self._arrays[name] = arr
    self._metadata["extra_arrays"][name] = {"trailing_shape": trailing, "dtype": dtype.name, "attrs": dict(attrs or {})}
    self._write_metadata()

  def array_attrs(self, name: str) -> dict[str, Any] | None:
    """The attrs of an added array (None when the store has no such array)."""
    entry = self._metadata["extra_arrays"].get(name)
    return None if entry is None else dict(entry["attrs"])

  def set_array_attrs(self, name: str, attrs: dict[str, Any]) -> None:
    """Replaces an added array's attrs (e.g. to mark it complete after the last write)."""
    if self._mode != "a" or name not in self._metadata["extra_arrays"]:
      raise StoreError(f"dataset {self._path}: cannot set attrs of {name!r} (open with mode='a'; add it first)")
    self._metadata["extra_arrays"][name]["attrs"] = dict(attrs)
    self._write_metadata()

  def write(self, name: str, start: int, values: np.ndarray) -> None:
    """Writes rows [start, start + len(values)) of an extra array, within committed frames."""
    if self._mode != "a":
      raise StoreError(f"dataset {self._path}: opened read-only; open it with mode='a' to write")
    if name not in self._metadata["extra_arrays"]:
      raise StoreError(f"dataset {self._path}: only arrays added with add_array can be written, not {name!r}")
    trailing, dtype, _ = self._expected_arrays()[name]
    values = np.asarray(values)
    if values.shape[1:] != tuple(trailing):
      self._fail(f"write: {name} rows have shape {list(values.shape[1:])}, expected {list(trailing)}")
    self._check_range(name, start, start + values.shape[0])
    self._sync_group()
    self._arrays[name][start : start + values.shape[0]].write(values.astype(dtype, copy=False)).result()

  # ------------------------------------------------------------------ helpers

  def _fail(self, message: str):
    raise StoreError(f"dataset {self._path}: {message}")

  def _read_json(self, key: str, what: str) -> dict[str, Any]:
    try:
      res = self._kv.read(key).result()
    except Exception as e:  # pylint: disable=broad-except
      self._fail(f"{key} could not be read ({_one_line(e)})")
    if res.state != "value":
      self._fail(f"{key} is missing; {what}")
    try:
      out = json.loads(bytes(res.value).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
      self._fail(f"{key} is not valid JSON ({_one_line(e)}); {FIX_HINT}")
    if not isinstance(out, dict):
      self._fail(f"{key} is not a JSON object; {FIX_HINT}")
    return out

  def _write_json(self, key: str, value: dict[str, Any]):
    # One kvstore write: atomic on file (temp file + rename) and object stores.
    self._kv.write(key, json.dumps(value, indent=1).encode("utf-8")).result()

  def _write_metadata(self):
    """Writes metadata.json (what readers use), then its mirror in zarr.json."""
    self._write_json("metadata.json", self._metadata)
    self._sync_group()

  def _sync_group(self):
    """Makes zarr.json a zarr v3 group whose attributes mirror metadata.json; writes only on change.

    Reads zarr.json once per handle (a store from before zarr.json has none), keeping
    attributes under keys that metadata.json lacks; a malformed one is replaced.
    """
    if self._group_doc is None:
      try:
        res = self._kv.read(GROUP).result()
      except Exception as e:  # pylint: disable=broad-except
        self._fail(f"{GROUP} could not be read ({_one_line(e)})")
      old = {}
      if res.state == "value":
        try:
          old = json.loads(bytes(res.value).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
          pass
      old = old if isinstance(old, dict) else {}
      attrs = old.get("attributes")
      if isinstance(attrs, dict):
        self._group_foreign = {k: v for k, v in attrs.items() if k not in self._metadata}
      self._group_doc = old
    doc = {"zarr_format": 3, "node_type": "group", "attributes": {**self._group_foreign, **self.metadata}}
    if doc != self._group_doc:
      self._write_json(GROUP, doc)
      self._group_doc = doc

  def __repr__(self):
    return f"EpisodeStore({self._path!r}, episodes={self._num_episodes}, frames={self._num_frames})"
