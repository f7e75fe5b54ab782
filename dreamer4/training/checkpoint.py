"""Async Orbax checkpoints holding the train state and the Grain iterator state together.

Restores are complete or fail loudly: the target tree (with the *current* mesh's
shardings) is compared with the checkpoint's metadata first, so a workdir holding an
incompatible model stops with one line instead of a partial load deep inside Orbax.
A checkpoint that cannot be read falls back to the previous step with a warning; nothing
is deleted.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from etils import epath

from dreamer4.errors import CheckpointError
from dreamer4.models import scan_layout


def absolute(path: str) -> str:
  """Orbax needs absolute paths: a relative local path is made absolute; URLs (gs://...) stay."""
  return path if "://" in str(path) else os.path.abspath(path)


def _key_name(k) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k)


def _paths(tree) -> dict[str, Any]:
  """Leaves by a path string that reads the same for live trees and Orbax metadata trees."""
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {"/".join(_key_name(k) for k in path): v for path, v in flat}


def _check_local_directory(directory: str) -> None:
  """A local checkpoint path (or one of its parents) that is a file fails here, in one line,
  not later in Orbax's background save thread (which leaves the run hanging)."""
  if "://" in directory:
    return
  p = directory
  while not os.path.exists(p) and os.path.dirname(p) != p:
    p = os.path.dirname(p)
  if not os.path.isdir(p):
    raise CheckpointError(
      f"checkpoint directory {directory}: {p} is a file, not a directory; use another --workdir (or move the file away)"
    )


class Checkpointer:
  """A thin wrapper over `ocp.CheckpointManager`: item "state" plus one item per data iterator.

  `data_names` names the Grain iterators saved beside the state (e.g. ("data", "data_long")
  when short and long batches come from two iterators); () saves the state alone.
  """

  def __init__(
    self, directory: str, *, keep: int = 3, async_save: bool = True, data_names: tuple[str, ...] = ("data",)
  ):
    self.directory = directory = absolute(directory)
    _check_local_directory(directory)
    self.data_names = tuple(data_names)
    handlers = {"state": ocp.StandardCheckpointHandler()}
    for name in self.data_names:
      handlers[name] = grain.checkpoint.CheckpointHandler()
    self._mngr = ocp.CheckpointManager(
      directory,
      item_names=tuple(handlers),
      item_handlers=handlers,
      options=ocp.CheckpointManagerOptions(
        max_to_keep=keep,
        enable_async_checkpointing=async_save,
        create=True,
        async_options=ocp.AsyncOptions(timeout_secs=600),
      ),
    )

  def all_steps(self) -> list[int]:
    return sorted(self._mngr.all_steps())

  def latest_step(self) -> int | None:
    return self._mngr.latest_step()

  def save(self, step: int, state, data_iters: dict | None = None, *, force: bool = False) -> bool:
    args = {"state": ocp.args.StandardSave(state)}
    for name in self.data_names:
      args[name] = grain.checkpoint.CheckpointSave(data_iters[name])
    return self._mngr.save(int(step), args=ocp.args.Composite(**args), force=force)

  def check_compatible(self, step: int, abstract_state) -> None:
    """Raises CheckpointError naming the first leaf whose shape/dtype/presence differs."""
    try:
      meta = self._mngr.item_metadata(step)["state"]
    except Exception as e:  # unreadable metadata is handled like a damaged checkpoint
      raise CheckpointError(f"checkpoint {self.directory}/{step}: metadata unreadable ({type(e).__name__})") from e
    if meta is None:
      return
    want, have = _paths(abstract_state), _paths(meta)
    missing = sorted(set(want) - set(have))
    extra = sorted(set(have) - set(want))
    if missing or extra:
      what = f"lacks {missing[0]}" if missing else f"has unexpected {extra[0]}"
      raise CheckpointError(
        f"checkpoint {self.directory}/{step} {what}: it was written by a different model or phase; "
        f"use a new --workdir or the config that wrote it"
      )
    for k, w in want.items():
      h = have[k]
      if tuple(w.shape) != tuple(h.shape):
        raise CheckpointError(
          f"checkpoint {self.directory}/{step}: {k} has shape {tuple(h.shape)} but the config builds "
          f"{tuple(w.shape)}; use a new --workdir or the model config that wrote it"
        )

  def restore(self, step: int, abstract_state, data_iters: dict | None = None):
    """Restores onto the shardings carried by `abstract_state` (any mesh / process count).

    The Grain iterators in `data_iters` are advanced in place to their saved positions.
    """
    wanted = abstract_state
    try:  # written with the other layer layout (scanned / unscanned): restore in its layout, convert
      meta = self._mngr.item_metadata(step)["state"]
      if meta is not None and set(_paths(abstract_state)) != set(_paths(meta)):
        abstract_state = scan_layout.convert_layout(abstract_state, meta)
    except Exception:  # pylint: disable=broad-except
      abstract_state = wanted  # not a layout difference: check_compatible names what is wrong
    self.check_compatible(step, abstract_state)
    args = {"state": ocp.args.StandardRestore(abstract_state)}
    other_count = {}
    for name, it in (data_iters or {}).items():
      alt = self._data_state_of_other_process_count(step, name)
      if alt is None:
        args[name] = grain.checkpoint.CheckpointRestore(it)
      else:
        other_count[name] = alt
    out = self._mngr.restore(step, args=ocp.args.Composite(**args))
    for name, path in other_count.items():
      # Written by a different number of processes. The loader's position is the number of
      # GLOBAL batches consumed, the same in every process's file (each process takes its
      # block of every global batch), so any writer's state is this process's state too.
      data_iters[name].set_state(json.loads(path.read_text()))
      logging.info("data position of %r taken from %s (another process count)", name, path)
    if abstract_state is not wanted:
      return scan_layout.convert_layout(out["state"], wanted)
    return out["state"]

  def _data_state_of_other_process_count(self, step: int, name: str):
    """The iterator file of a writer with another process count, or None when ours exists."""
    d = epath.Path(self.directory) / str(step) / name
    if (d / f"process_{jax.process_index()}-of-{jax.process_count()}.json").exists() or not d.exists():
      return None
    files = sorted(d.glob("process_0-of-*.json")) or sorted(d.glob("process_*-of-*.json"))
    return files[0] if files else None

  def restore_latest_good(self, abstract_state, data_iters: dict | None = None):
    """(step, state) from the newest readable checkpoint, or (None, None) when there is none.

    An incompatible model raises. A damaged step (unreadable or truncated files) is logged
    with a warning naming it, moved aside to `<step>.damaged` (kept, never deleted: it may be
    someone's only copy of that step) and the previous step is tried.
    """
    for step in reversed(self.all_steps()):
      try:
        return step, self.restore(step, abstract_state, data_iters)
      except CheckpointError as e:
        if "metadata unreadable" not in str(e):
          raise
        reason = str(e)
      except Exception as e:  # noqa: BLE001 -- any read failure means this step is damaged
        reason = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
      logging.warning(
        "checkpoint step %d in %s is damaged (%s); falling back to the previous step", step, self.directory, reason
      )
      self._set_aside(step)
    return None, None

  def _set_aside(self, step: int):
    src = epath.Path(self.directory) / str(step)
    if jax.process_index() == 0 and src.exists():
      dst = epath.Path(self.directory) / f"{step}.damaged"
      n = 1
      while dst.exists():
        dst = epath.Path(self.directory) / f"{step}.damaged{n}"
        n += 1
      src.rename(dst)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils

      multihost_utils.sync_global_devices(f"checkpoint_set_aside_{step}")
    self._mngr.reload()

  def wait(self):
    self._mngr.wait_until_finished()
    self._mngr.check_for_errors()

  def close(self):
    self._mngr.wait_until_finished()
    self._mngr.close()


def restore_params(directory: str, abstract_params, step: int | None = None):
  """(step, params) of a finished phase: only the "params" subtree, onto the target shardings.

  Used to freeze an earlier phase (e.g. the tokenizer under the dynamics model). Shapes are
  checked against the checkpoint's metadata first; a mismatch raises CheckpointError.
  """
  directory = absolute(directory)
  mngr = ocp.CheckpointManager(directory, item_names=("state",), item_handlers={"state": ocp.PyTreeCheckpointHandler()})
  try:
    steps = sorted(mngr.all_steps())
    if not steps:
      raise CheckpointError(
        f"{directory} holds no checkpoint; train that phase first (its workdir is the parent of {directory})"
      )
    step = steps[-1] if step is None else step
    meta = mngr.item_metadata(step)["state"]
    meta_params = meta.get("params", {}) if hasattr(meta, "get") else meta["params"]
    wanted = abstract_params
    if set(_paths(abstract_params)) != set(_paths(meta_params)):  # e.g. unscanned layers, scanned model
      try:
        abstract_params = scan_layout.convert_layout(abstract_params, meta_params)
      except Exception:  # pylint: disable=broad-except
        abstract_params = wanted  # not a layout difference: the check below names what is wrong
    have = _paths(meta_params)
    for k, w in _paths(abstract_params).items():
      if k not in have:
        raise CheckpointError(
          f"checkpoint {directory}/{step} lacks params/{k}: it was written by a "
          f"different model; point the config at the right workdir"
        )
      if tuple(have[k].shape) != tuple(w.shape):
        raise CheckpointError(
          f"checkpoint {directory}/{step}: params/{k} has shape {tuple(have[k].shape)} but the "
          f"config builds {tuple(w.shape)}; the model settings disagree with the checkpoint"
        )
    target = {"params": abstract_params}
    restore_args = jax.tree.map(lambda s: ocp.ArrayRestoreArgs(sharding=s.sharding), target)
    out = mngr.restore(
      step,
      args=ocp.args.Composite(state=ocp.args.PyTreeRestore(target, restore_args=restore_args, partial_restore=True)),
    )
    params = out["state"]["params"]
    if abstract_params is not wanted:
      params = scan_layout.convert_layout(params, wanted)
    return step, params
  finally:
    mngr.close()
