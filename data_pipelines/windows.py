"""WindowSource: a Grain random-access source of fixed-length windows over episodes.

No jax here (Grain may run this in spawned workers, which must not grab accelerators).

The window rule (every phase, every split): windows cover every frame.
  pad="end" (training and evaluation of every loss): one window STARTS at every frame
    of every episode. A window that runs past its episode's end is padded: frames
    and latents repeat the last real frame, actions are the null action with
    `action_labelled` False, rewards are 0, and `valid_T` is False there. Every
    loss, target and metric reads only valid frames. Padding sits after the real
    frames only, so a block-causal model never attends from a real frame to a
    padded one: the real frames' outputs equal those of the unpadded episode.
    Frame k of an episode is in min(k + 1, T) windows, so the last T frames of every
    episode (its reward and terminal frames included) are drawn exactly as often
    as any frame in the middle of a long episode, and an episode of L < T frames
    still gives L windows.
  pad="start" (phase 3's start states): one window ENDS at every frame; frames
    before the episode's first one repeat it with the null, unlabelled action
    (`valid_T` False). Imagination primes its model with the window and imagines
    onward from its last frame, so every frame is a start state.
  pad="none": only windows that fit inside one episode (the rule before padding;
    kept for callers that need T real frames).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import grain
import numpy as np

from data_pipelines.episodes import EpisodeStore
from data_pipelines.errors import DataError

DEFAULT_FIELDS = ("frames", "actions_discrete", "rewards", "tasks", "action_labelled")
# Fields every window carries besides the store arrays it reads (`WindowSource.__getitem__`).
LOADER_FIELDS = ("valid_T", "first_T", "index", "episode", "start")
PAD_MODES = ("end", "start", "none")
# Fields whose padding is zero (no action, no reward, unlabelled) rather than a repeat of
# the nearest real frame.
_ZERO_PAD = ("actions_discrete", "actions_continuous", "action_labelled", "rewards")


def _check_pad(pad: str) -> str:
  if pad not in PAD_MODES:
    raise ValueError(f"window padding must be one of {PAD_MODES}, got {pad!r}")
  return pad


def window_table(
  episode_offsets: np.ndarray,
  episode_ids: Sequence[int],
  window: int,
  pad: str = "end",
  last_anchor: np.ndarray | None = None,
  *,
  entry_anchor: np.ndarray | None = None,
  with_entry: bool = False,
) -> tuple[np.ndarray, ...]:
  """The windows of the given episodes under one padding rule (see the module docstring).

  Args:
    episode_offsets: int64 [E + 1] from the store.
    episode_ids: episodes to draw from (any order; the table follows that order).
    window: frames per window (T).
    pad: "end", "start" or "none".
    last_anchor: optional int64 [E] over all of the store's episodes: the last global frame
      a window of that episode may be anchored at (its first frame with pad="end"); None:
      every frame. Keeps e.g. only the windows that start before an episode's goal.
    entry_anchor: optional int64 [len(episode_ids)]: a last anchor per entry of episode_ids
      (which may then repeat an episode, e.g. once per task it demonstrates; `Demos`).
    with_entry: also return entry_W, the index into episode_ids of each window's entry.

  Returns:
    (starts_W, episode_starts_W, episode_ends_W): the global index of each window's
    first slot (it may lie before its episode with pad="start" or run past its end
    with pad="end"), and the [begin, end) frame range of the episode it belongs to
    (and entry_W with `with_entry`).
  """
  _check_pad(pad)
  offsets = np.asarray(episode_offsets, np.int64)
  ids = np.asarray(episode_ids, np.int64).reshape(-1)
  begin, end = offsets[ids], offsets[ids + 1]
  if pad == "none":
    count = np.maximum(end - begin - window + 1, 0)
  else:
    count = end - begin
  # Vectorised ragged arange: window k of episode j is anchored at begin[j] + k.
  ep_of_window = np.repeat(np.arange(len(ids)), count)
  first_window = np.cumsum(count) - count
  within = np.arange(count.sum(), dtype=np.int64) - first_window[ep_of_window]
  starts = begin[ep_of_window] + within
  keep = np.ones(starts.shape, bool)
  if last_anchor is not None:
    keep &= starts <= np.asarray(last_anchor, np.int64)[ids[ep_of_window]]
  if entry_anchor is not None:
    keep &= starts <= np.asarray(entry_anchor, np.int64).reshape(-1)[ep_of_window]
  if pad == "start":
    starts = starts - (window - 1)  # the window ends at the anchor frame
  out = (starts[keep], begin[ep_of_window][keep], end[ep_of_window][keep])
  return out + (ep_of_window[keep],) if with_entry else out


def covered_counts(
  num_frames: int, starts_W: np.ndarray, episode_starts_W: np.ndarray, episode_ends_W: np.ndarray, window: int
) -> np.ndarray:
  """int64 [num_frames]: how many windows hold each frame as a valid (real) frame."""
  lo = np.maximum(starts_W, episode_starts_W)
  hi = np.minimum(starts_W + window, episode_ends_W)
  diff = np.zeros(num_frames + 1, np.int64)
  np.add.at(diff, lo, 1)
  np.add.at(diff, hi, -1)
  return np.cumsum(diff)[:num_frames]


def coverage(
  store: EpisodeStore,
  episode_ids: Sequence[int],
  window: int,
  pad: str = "end",
  relevant_ids: Sequence[int] | None = None,
  tables: Sequence[tuple] | None = None,
) -> dict[str, float]:
  """The share of the given episodes that windows reach, as the coverage line logs it.

  Args:
    store: the EpisodeStore.
    episode_ids: the episodes of the split.
    window: frames per window.
    pad: the padding rule.
    relevant_ids: task-relevant episodes (phase 2's mixture) to report separately;
      None reports the relevant share of `episode_ids` by `report.episode_success`.
    tables: window tables (as `window_table` returns) to measure instead of building
      one (e.g. the uniform and the relevant tables of a data mixture, together).

  Returns:
    episodes / frames / relevant_episodes / reward_frames / terminal_frames: the
    share (0..1) of each that lies in at least one window as a valid frame; and
    windows_per_frame, windows_per_reward_frame, windows_per_terminal_frame: the mean
    number of windows holding such a frame (equal rates mean no kind of frame is
    under-drawn); and num_episodes, num_relevant_episodes: how many episodes the split and its
    task-relevant part hold (what phase 2's behaviour cloning has to learn from).
  """
  offsets = store.episode_offsets
  ids = np.asarray(episode_ids, np.int64).reshape(-1)
  if tables is None:
    tables = [window_table(offsets, ids, window, pad)]
  n = int(offsets[-1])
  count = np.zeros(n, np.int64)
  for starts, ep_begin, ep_end in tables:
    count += covered_counts(n, starts, ep_begin, ep_end, window)
  in_split = np.zeros(n, bool)
  for e in ids:
    in_split[offsets[e] : offsets[e + 1]] = True
  rewards = np.asarray(store.read_many(("rewards",), 0, n)["rewards"]).reshape(n) if n else np.zeros(0)
  reward_frames = in_split & (rewards != 0)
  terminal = np.zeros(n, bool)
  terminal[offsets[ids + 1] - 1] = True
  if relevant_ids is None:
    from data_pipelines.report import episode_success  # pylint: disable=g-import-not-at-top

    success = episode_success(store)[0]
    relevant_ids = [int(e) for e in ids if success[int(e)]]
  relevant = np.asarray(relevant_ids, np.int64).reshape(-1)

  def share(mask):
    return float(np.mean(count[mask] > 0)) if mask.any() else 1.0

  def episode_share(eps):
    if not len(eps):
      return 1.0
    reached = np.add.reduceat(count > 0, offsets[:-1])[eps] if n else np.zeros(len(eps))
    return float(np.mean(reached > 0))

  def rate(mask):
    return float(np.mean(count[mask])) if mask.any() else 0.0

  return {
    "episodes": episode_share(ids),
    "frames": share(in_split),
    "relevant_episodes": episode_share(relevant),
    "reward_frames": share(reward_frames),
    "terminal_frames": share(terminal),
    "windows_per_frame": rate(in_split),
    "windows_per_reward_frame": rate(reward_frames),
    "windows_per_terminal_frame": rate(terminal),
    "num_episodes": int(len(ids)),
    "num_relevant_episodes": int(len(relevant)),
  }


@dataclasses.dataclass(frozen=True)
class Demos:
  """Task demonstrations to draw windows from: entry i says that episode[i] accomplished task[i]
  on global frame done_at[i] (so it demonstrates that task up to there), and its windows may be
  anchored up to frame last_anchor[i]. An episode may appear once per task it accomplished,
  whatever task it was labelled with (`data_pipelines.loader.task_demos`).
  """

  episode: np.ndarray  # int64 [D]
  task: np.ndarray  # int64 [D], an index into the store's task_names
  done_at: np.ndarray  # int64 [D]
  last_anchor: np.ndarray  # int64 [D]

  def __len__(self) -> int:
    return len(self.episode)


class WindowSource(grain.sources.RandomAccessDataSource):
  """Record i is one window of `window` frames, as a dict of numpy arrays.

  Each record holds every requested field with leading dim T (e.g. frames uint8
  [T, H, W, C]), plus `valid_T` bool (False on padding slots), `first_T` bool (True
  on an episode's first frame), `index` int64 (i) and `episode` int64 (its episode). The store is opened lazily in
  each process and dropped when pickled, so the source can be sent to Grain workers.

  Args:
    path: EpisodeStore location (directory or kvstore URL).
    window: frames per record (T).
    episode_ids: episodes to draw windows from (e.g. one side of `store.split()`).
    fields: arrays to read per record.
    pad: the padding rule ("end", "start" or "none"; see the module docstring).
    last_anchor: optional per-episode last anchor frame (see `window_table`).
    demos: optional `Demos`: the windows of each demonstration instead of those of episode_ids
      (pass demos.episode as episode_ids); each record's "tasks" hold the demonstration's task
      and "done_at" (int64) its frame of accomplishment.
  """

  def __init__(
    self,
    path: str,
    window: int,
    episode_ids: Sequence[int],
    fields: Sequence[str] = DEFAULT_FIELDS,
    pad: str = "end",
    last_anchor: np.ndarray | None = None,
    demos: Demos | None = None,
  ):
    if window < 1:
      raise DataError(f"WindowSource: window must be >= 1, got {window}")
    _check_pad(pad)
    store = EpisodeStore.open(path, "r")
    ids = np.asarray(episode_ids, np.int64).reshape(-1)
    if ids.size == 0:
      raise DataError(
        f"dataset {path}: the episode list is empty; check the train/eval split "
        "(collect more episodes or lower eval_fraction)"
      )
    if ids.min() < 0 or ids.max() >= store.num_episodes:
      raise DataError(
        f"dataset {path}: episode ids must be in [0, {store.num_episodes}), got [{ids.min()}, {ids.max()}]"
      )
    missing = [f for f in fields if f not in store.array_names or f == "episode_offsets"]
    if missing:
      raise DataError(
        f"dataset {path}: no per-frame array {missing[0]!r}; it has "
        f"{', '.join(n for n in store.array_names if n != 'episode_offsets')}"
      )
    self._demos, self._entry_W = demos, None
    if demos is not None:
      if not np.array_equal(ids, np.asarray(demos.episode, np.int64)) or "tasks" not in fields:
        raise DataError(f"dataset {path}: demonstrations need episode_ids == demos.episode and the 'tasks' field")
      *self.table, self._entry_W = window_table(
        store.episode_offsets, ids, window, pad, last_anchor, entry_anchor=demos.last_anchor, with_entry=True
      )
      self.table = tuple(self.table)
    else:
      self.table = window_table(store.episode_offsets, ids, window, pad, last_anchor)
    self._starts_W, self._episode_starts_W, self._episode_ends_W = self.table
    self._episode_W = np.searchsorted(store.episode_offsets, self._episode_starts_W, side="right") - 1
    if not len(self._starts_W) and last_anchor is not None:
      raise DataError(f"dataset {path}: no window of {window} frames starts at or before its episode's last anchor")
    if not len(self._starts_W):
      longest = int(store.episode_lengths[ids].max())
      raise DataError(
        f"dataset {path} has no episode of at least {window} frames (longest: {longest}); "
        "lower --config.data.window or collect longer episodes"
      )
    self.path = path
    self.window = int(window)
    self.fields = tuple(fields)
    self.pad = pad
    self.episode_ids = ids
    self._store: EpisodeStore | None = store

  def __len__(self) -> int:
    return len(self._starts_W)

  def _get_store(self) -> EpisodeStore:
    if self._store is None:
      self._store = EpisodeStore.open(self.path, "r")
    return self._store

  def __getitem__(self, index: int) -> dict[str, Any]:
    i = int(index)
    T = self.window
    start, begin, end = int(self._starts_W[i]), int(self._episode_starts_W[i]), int(self._episode_ends_W[i])
    lo, hi = max(start, begin), min(start + T, end)
    real = self._get_store().read_many(self.fields, lo, hi)
    before, after = lo - start, start + T - hi  # padding slots on each side
    out = {}
    for name, x in real.items():
      if before or after:
        widths = [(before, after)] + [(0, 0)] * (x.ndim - 1)
        if name in _ZERO_PAD:
          x = np.pad(x, widths, mode="constant")
        else:
          x = np.pad(x, widths, mode="edge")
      out[name] = x
    valid_T = np.zeros((T,), bool)
    valid_T[before : T - after] = True
    first_T = np.zeros((T,), bool)
    if lo == begin:
      first_T[before] = True
    out["valid_T"] = valid_T
    out["first_T"] = first_T
    out["index"] = np.int64(i)
    out["episode"] = np.int64(self._episode_W[i])
    out["start"] = np.int64(start)  # global frame index of slot 0 (below the episode's first frame when padded)
    if self._demos is not None:
      entry = int(self._entry_W[i])
      out["tasks"] = np.full_like(out["tasks"], self._demos.task[entry])
      out["done_at"] = np.int64(self._demos.done_at[entry])
    return out

  def __getstate__(self):
    state = dict(self.__dict__)
    state["_store"] = None  # tensorstore handles are per process; reopen after unpickling
    return state

  def __repr__(self):
    return f"WindowSource({self.path!r}, window={self.window}, pad={self.pad!r}, records={len(self)})"
