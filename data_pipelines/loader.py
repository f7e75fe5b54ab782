"""Training and evaluation batches from an EpisodeStore, and their assembly into global jax.Arrays.

Batches stay numpy uint8 on the host (normalise on device: floats would quadruple
host bytes). Only `global_batch` touches jax, and imports it lazily.

Sharding across processes: every epoch is one permutation of all windows, drawn
from (seed, epoch), cut into global batches of B*P positions; within each, process p
takes the block of B positions [p*B, (p+1)*B). The global batch that
`global_batch` assembles is therefore the same windows in the same order whatever
the process count (a 4-process run sees exactly the batches of a 1-process run),
cut to the same whole number of batches on every process. The shards are therefore
disjoint, together cover the epoch except for the dropped remainder, and every
process yields the same number of batches per epoch (multi-host steps stay in
lockstep).
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Sequence
from typing import Any

import grain
import numpy as np

from data_pipelines.errors import DataError
from data_pipelines.windows import DEFAULT_FIELDS, Demos, WindowSource, coverage, window_table


class _EpochShuffleShard(grain.MapDataset):
  """Infinite MapDataset: element k is this process's k-th window over repeated, reshuffled epochs."""

  def __init__(
    self,
    parent: grain.MapDataset,
    *,
    seed: int,
    per_process_epoch: int,
    process_index: int,
    process_count: int,
    block: int = 1,
  ):
    super().__init__(parent)
    self._block = int(block)
    self._seed = int(seed)
    self._per_epoch = int(per_process_epoch)
    self._process_index = int(process_index)
    self._process_count = int(process_count)
    self._num_records = len(parent)
    self._lock = threading.Lock()
    self._cache: dict[int, np.ndarray] = {}

  def __len__(self) -> int:
    return sys.maxsize

  def _order(self, epoch: int) -> np.ndarray:
    # Reader threads straddle at most two epochs at a time; keep both permutations.
    with self._lock:
      perm = self._cache.get(epoch)
      if perm is None:
        perm = np.random.default_rng([self._seed, epoch]).permutation(self._num_records)
        self._cache = {e: p for e, p in self._cache.items() if e >= epoch - 1}
        self._cache[epoch] = perm
      return perm

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    epoch, k = divmod(int(index), self._per_epoch)
    b, i = divmod(k, self._block)  # b-th global batch, i-th row of this process's block
    position = (b * self._process_count + self._process_index) * self._block + i
    return self._parent[int(self._order(epoch)[position])]

  def __getstate__(self):
    state = dict(self.__dict__)
    state["_lock"] = None
    return state

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._lock = threading.Lock()

  def __str__(self) -> str:
    return f"_EpochShuffleShard(seed={self._seed}, shard={self._process_index}/{self._process_count})"


def _check_batch_size(batch_size: int):
  if batch_size < 1:
    raise DataError(
      f"batch_size must be >= 1, got {batch_size}; set the batch size (--config.train.batch_size) to a positive value"
    )


def relevant_rows(fraction: float, local_batch: int) -> int:
  """Rows of each per-process batch drawn from task-relevant episodes (phase 2's mixture).

  Each process's batch is its uniform rows, then its relevant rows; the global batch
  stacks the processes' batches in process order. 0 when the fraction is 0.
  """
  return int(round(float(fraction) * local_batch)) if fraction > 0 else 0


def relevant_episode_ids(store, episode_ids: Sequence[int]) -> list[int]:
  """The episodes among `episode_ids` that accomplished their task.

  The paper's "relevant" sequences [P §4.1] for the phase-2 data mixture, with the success
  definition of `data_pipelines.report.episode_success`: where the task is an achievement
  (Craftax), the episode unlocked it (any other achievement does not count: Craftax pays
  +1 for every achievement, so a positive return says little); otherwise (toy: reaching
  the task's goal is the only reward) a positive sum of rewards.
  """
  from data_pipelines.report import episode_success  # pylint: disable=g-import-not-at-top

  success = episode_success(store)[0]
  return [int(e) for e in episode_ids if success[int(e)]]


def task_demos(store, episode_ids, until_success: bool = True):
  """Every (episode, task) among `episode_ids` where the episode accomplished the task, for each
  task some episode of the store is labelled with (hindsight task labels; `windows.Demos`).

  An episode labelled with one task often accomplishes others on its way (Craftax: every
  make_wood_pickaxe episode first places a table), and up to that frame it demonstrates them as
  well. Tasks are matched as `report.episode_success` does: a task named like an achievement counts
  where that achievement was unlocked; a store without achievement unlocks gives each episode
  only its own task, where it succeeded. until_success: windows are anchored no later than the
  frame before the accomplishment (else anywhere in the episode). Entries are sorted by episode,
  then task.
  """
  from data_pipelines.report import UNLOCKS, episode_success, success_frames  # pylint: disable=g-import-not-at-top

  offsets = np.asarray(store.episode_offsets, np.int64)
  ids = np.asarray(list(episode_ids), np.int64).reshape(-1)
  success, task_E, _, _, ach_names = episode_success(store)
  done_own = success_frames(store)
  rows = []  # (episode, task, done_at)
  if UNLOCKS in store.array_names:
    unlocks = np.asarray(store.read_many([UNLOCKS], 0, store.num_frames)[UNLOCKS]) > 0
    wanted = np.zeros(store.num_episodes, bool)
    wanted[ids] = True
    for k in sorted(set(task_E[ids].tolist())):
      name = store.task_names[k]
      if name not in ach_names:
        rows += [(e, k, done_own[e]) for e in ids if task_E[e] == k and success[e]]
        continue
      hits = np.nonzero(unlocks[:, ach_names.index(name)])[0]  # frames that unlocked it, in order
      episode_of_hit = np.searchsorted(offsets, hits, side="right") - 1
      episodes, first = np.unique(episode_of_hit, return_index=True)  # each episode's first unlock
      keep = wanted[episodes]
      rows += [(e, k, f) for e, f in zip(episodes[keep].tolist(), hits[first][keep].tolist())]
  else:
    rows = [(e, task_E[e], done_own[e]) for e in ids if success[e]]
  rows.sort()
  arr = np.asarray(rows, np.int64).reshape(-1, 3)
  episode, task, done_at = arr[:, 0], arr[:, 1], arr[:, 2]
  last = offsets[episode + 1] - 1
  anchor = np.maximum(done_at - 1, offsets[episode]) if until_success else last
  return Demos(episode=episode, task=task, done_at=done_at, last_anchor=anchor)


def train_iterator(
  path: str,
  *,
  window: int,
  batch_size: int,
  seed: int,
  episode_ids: Sequence[int],
  process_index: int = 0,
  process_count: int = 1,
  num_threads: int = 4,
  prefetch: int = 8,
  fields: Sequence[str] = DEFAULT_FIELDS,
  pad: str = "end",
  last_anchor: np.ndarray | None = None,
  demos: Demos | None = None,
) -> grain.DatasetIterator:
  """An endless, checkpointable iterator of this process's training batches.

  Args:
    path: EpisodeStore location.
    window: frames per window (T).
    batch_size: windows per batch on THIS process (the global batch is
      batch_size * process_count).
    seed: data seed; epoch e is shuffled with (seed, e).
    episode_ids: episodes to train on.
    process_index: this process's index (jax.process_index()).
    process_count: number of processes (jax.process_count()).
    num_threads: reader threads.
    prefetch: batches buffered ahead by the reader threads.
    fields: per-frame arrays to read.
    pad: the window rule (data_pipelines/windows.py): "end" covers every frame.
    last_anchor: optional per-episode last anchor frame (`windows.window_table`), e.g. the
      frame before each episode's goal: only windows anchored at or before it.
    demos: optional `windows.Demos` (episode_ids = demos.episode): the windows of each
      demonstration, its task in "tasks" and its frame of accomplishment in "done_at".

  Returns:
    A grain DatasetIterator yielding dicts of numpy arrays with leading dims
    [B, T] (frames uint8 [B, T, H, W, C], valid_T and first_T bool [B, T], index
    int64 [B]);
    it supports get_state()/set_state() and
    grain.checkpoint.CheckpointSave/CheckpointRestore.

  Raises:
    DataError: bad batch size, empty episode list, or no episode long enough
      for the window (ValueError: a bad process layout).
  """
  _check_batch_size(batch_size)
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index must be in [0, {process_count}), got {process_index}")
  source = WindowSource(path, window, episode_ids, fields, pad, last_anchor, demos)
  per_process = len(source) // process_count // batch_size * batch_size
  if per_process == 0:
    raise DataError(
      f"dataset {path} has {len(source)} windows of {window} frames, fewer than one global batch "
      f"({batch_size} x {process_count} processes); collect more episodes or lower the batch size"
    )
  ds = _EpochShuffleShard(
    grain.MapDataset.source(source),
    seed=seed,
    per_process_epoch=per_process,
    process_index=process_index,
    process_count=process_count,
    block=batch_size,
  )
  ds = ds.batch(batch_size, drop_remainder=True)
  read = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch)
  return iter(ds.to_iter_dataset(read))


def eval_batches(
  path: str,
  *,
  window: int,
  batch_size: int,
  episode_ids: Sequence[int],
  max_batches: int,
  fields: Sequence[str] = DEFAULT_FIELDS,
  pad: str = "end",
  process_index: int = 0,
  process_count: int = 1,
) -> list[dict[str, np.ndarray]]:
  """This process's share of a fixed list of at most `max_batches` evaluation batches.

  Windows are spread evenly over all eval windows (not the first few, which would all
  come from one episode), without shuffling. Global batch b holds batch_size *
  process_count windows; process p takes its block [p*B, (p+1)*B) of it, as in
  training, so the processes evaluate disjoint windows and the global batches (and so
  the evaluation's mean) are those of a 1-process run with the same global batch.
  Every batch is full so eval steps compile once; when there are fewer windows than
  one global batch, windows repeat.
  """
  _check_batch_size(batch_size)
  if max_batches < 1:
    raise DataError(f"max_batches must be >= 1, got {max_batches}")
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index must be in [0, {process_count}), got {process_index}")
  source = WindowSource(path, window, episode_ids, fields, pad)
  n = len(source)
  global_batch_size = batch_size * process_count
  num_batches = min(max_batches, -(-n // global_batch_size))
  count = num_batches * global_batch_size
  picks = np.arange(count, dtype=np.int64) * n // count
  batches = []
  for b in range(num_batches):
    lo = b * global_batch_size + process_index * batch_size
    records = [source[int(i)] for i in picks[lo : lo + batch_size]]
    batches.append({k: np.stack([r[k] for r in records]) for k in records[0]})
  return batches


def window_coverage(
  store,
  episode_ids: Sequence[int],
  window: int,
  pad: str = "end",
  relevant_ids: Sequence[int] | None = None,
  extra_tables: Sequence[tuple] = (),
) -> dict[str, float]:
  """`windows.coverage` of a phase's windows (see there); `extra_tables` adds e.g. the relevant rows' windows."""
  tables = [window_table(store.episode_offsets, episode_ids, window, pad)] + list(extra_tables)
  return coverage(store, episode_ids, window, pad, relevant_ids=relevant_ids, tables=tables)


def global_batch(
  local_batch: dict[str, np.ndarray], mesh: Any, batch_axes: Sequence[str] | None = None
) -> dict[str, Any]:
  """Assembles each process's local batch into global jax.Arrays sharded on the batch axes.

  Args:
    local_batch: this process's numpy batch (leading dim = per-process batch).
    mesh: the jax Mesh.
    batch_axes: mesh axes the batch dimension is split over; axes the mesh lacks are skipped.
      None: the "batch" rule of configs.common.LOGICAL_AXIS_RULES (the axes the models'
      activations are constrained to, so the batch arrives where the step wants it).

  Returns:
    Dict of jax.Array with leading dim batch_size * process_count.

  Raises:
    DataError: if the global batch does not divide the product of the batch axes.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from jax.sharding import NamedSharding  # pylint: disable=g-import-not-at-top
  from jax.sharding import PartitionSpec as P

  if batch_axes is None:
    from configs.common import LOGICAL_AXIS_RULES  # pylint: disable=g-import-not-at-top

    batch_axes = dict(LOGICAL_AXIS_RULES)["batch"]
    batch_axes = (batch_axes,) if isinstance(batch_axes, str) else tuple(batch_axes or ())
  axes = tuple(a for a in batch_axes if a in mesh.shape)
  ways = int(np.prod([mesh.shape[a] for a in axes])) if axes else 1
  sharding = NamedSharding(mesh, P(axes if axes else None))
  out = {}
  for key, x in local_batch.items():
    global_b = x.shape[0] * jax.process_count()
    if global_b % ways:
      raise DataError(
        f"global batch {global_b} does not divide the {ways} devices of mesh axes {axes}; "
        "set --config.data.batch_size to a multiple of them"
      )
    out[key] = jax.make_array_from_process_local_data(sharding, np.asarray(x))
  return out
