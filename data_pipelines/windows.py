"""WindowSource: a Grain random-access source of fixed-length windows inside episodes.

No jax here (Grain may run this in spawned workers, which must not grab accelerators).
"""

from __future__ import annotations

from typing import Any, Sequence

import grain
import numpy as np

from data_pipelines.episodes import EpisodeStore

DEFAULT_FIELDS = ("frames", "actions_discrete", "rewards", "tasks", "action_labelled")


def window_table(episode_offsets: np.ndarray, episode_ids: Sequence[int], window: int) -> tuple[np.ndarray, np.ndarray]:
  """Start frames of every window of `window` frames that fits inside one episode.

  Args:
    episode_offsets: int64 [E + 1] from the store.
    episode_ids: episodes to draw from (any order; the table follows that order).
    window: frames per window.

  Returns:
    (starts_W, episode_starts_W): global start frame of each window, and the first
    frame of the episode it lies in. Episodes shorter than `window` contribute nothing.
  """
  offsets = np.asarray(episode_offsets, np.int64)
  ids = np.asarray(episode_ids, np.int64).reshape(-1)
  begin, end = offsets[ids], offsets[ids + 1]
  count = np.maximum(end - begin - window + 1, 0)
  # Vectorised ragged arange: window k of episode j starts at begin[j] + k.
  ep_of_window = np.repeat(np.arange(len(ids)), count)
  first_window = np.cumsum(count) - count
  within = np.arange(count.sum(), dtype=np.int64) - first_window[ep_of_window]
  return begin[ep_of_window] + within, begin[ep_of_window]


class WindowSource(grain.sources.RandomAccessDataSource):
  """Record i is `window` consecutive frames of one episode, as a dict of numpy arrays.

  Each record holds every requested field with leading dim T (e.g. frames uint8
  [T, H, W, C]), plus `first_T` bool (True on an episode's first frame) and
  `index` int64 (i). The store is opened lazily in each process and dropped when
  pickled, so the source can be sent to Grain workers.

  Args:
    path: EpisodeStore location (directory or kvstore URL).
    window: frames per record (T).
    episode_ids: episodes to draw windows from (e.g. one side of `store.split()`).
    fields: arrays to read per record.
  """

  def __init__(self, path: str, window: int, episode_ids: Sequence[int], fields: Sequence[str] = DEFAULT_FIELDS):
    if window < 1:
      raise ValueError(f"WindowSource: window must be >= 1, got {window}")
    store = EpisodeStore.open(path, "r")
    ids = np.asarray(episode_ids, np.int64).reshape(-1)
    if ids.size == 0:
      raise ValueError(f"dataset {path}: the episode list is empty; check the train/eval split "
                       "(collect more episodes or lower eval_fraction)")
    if ids.min() < 0 or ids.max() >= store.num_episodes:
      raise ValueError(f"dataset {path}: episode ids must be in [0, {store.num_episodes}), got "
                       f"[{ids.min()}, {ids.max()}]")
    missing = [f for f in fields if f not in store.array_names or f == "episode_offsets"]
    if missing:
      raise ValueError(f"dataset {path}: no per-frame array {missing[0]!r}; it has "
                       f"{', '.join(n for n in store.array_names if n != 'episode_offsets')}")
    self._starts_W, self._episode_starts_W = window_table(store.episode_offsets, ids, window)
    if not len(self._starts_W):
      longest = int(store.episode_lengths[ids].max())
      raise ValueError(f"dataset {path} has no episode of at least {window} frames (longest: {longest}); "
                       "lower --config.data.window or collect longer episodes")
    self.path = path
    self.window = int(window)
    self.fields = tuple(fields)
    self._store: EpisodeStore | None = store

  def __len__(self) -> int:
    return len(self._starts_W)

  def _get_store(self) -> EpisodeStore:
    if self._store is None:
      self._store = EpisodeStore.open(self.path, "r")
    return self._store

  def __getitem__(self, index: int) -> dict[str, Any]:
    i = int(index)
    start = int(self._starts_W[i])
    out = self._get_store().read_many(self.fields, start, start + self.window)
    first_T = np.zeros((self.window,), bool)
    first_T[0] = start == self._episode_starts_W[i]
    out["first_T"] = first_T
    out["index"] = np.int64(i)
    return out

  def __getstate__(self):
    state = dict(self.__dict__)
    state["_store"] = None  # tensorstore handles are per process; reopen after unpickling
    return state

  def __repr__(self):
    return f"WindowSource({self.path!r}, window={self.window}, records={len(self)})"
