"""The one training loop. Phases plug in a model, a loss, evaluations and their data streams
(the contract, every member the loop reads: dreamer4/training/phase.py); the loop owns the rest.

Sections: workdir and config · data · mesh · train state · checkpoint and resume · jitted
steps · periodic actions · the loop. No phase has a loop of its own.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from etils import epath
from jax.experimental import multihost_utils

from data_pipelines import loader as data_loader
from data_pipelines.episodes import EpisodeStore
from dreamer4 import sharding as shd
from dreamer4.errors import ConfigError
from dreamer4.training import metrics as mt
from dreamer4.training import state as st
from dreamer4.training.checkpoint import Checkpointer
from dreamer4.training.phase import Phase, Streams, TrainData  # the contract: what the loop reads of a phase


class _Preemption:
  """SIGTERM sets a flag; every process acts on it at the same step (process 0's view wins)."""

  def __init__(self):
    self.requested = False
    self._old = None

  def install(self):
    try:
      self._old = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread (e.g. some test runners): no handler
      self._old = None

  def _handle(self, *_):
    self.requested = True

  def uninstall(self):
    if self._old is not None:
      signal.signal(signal.SIGTERM, self._old)

  def agreed(self) -> bool:
    if jax.process_count() == 1:
      return self.requested
    flags = multihost_utils.process_allgather(np.asarray(int(self.requested), np.int32))
    return bool(np.max(flags))


def write_config(workdir: str, config) -> None:
  if jax.process_index() == 0:
    path = epath.Path(workdir)
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(config.to_json_best_effort(indent=2, sort_keys=True))


def open_dataset(config) -> EpisodeStore:
  if not config.data.path:
    raise ConfigError(
      "--config.data.path is empty; point it at an EpisodeStore "
      "(make one with python -m data_pipelines.collect --env=toy --output=PATH)"
    )
  return EpisodeStore.open(config.data.path)


def train_and_evaluate(config, workdir: str, make_phase: Callable[..., Phase]) -> dict:
  """Trains `make_phase(config, store, mesh)` in `workdir`; resumes from its latest good checkpoint.

  SIGTERM (preemption) at any point after the call starts makes the loop save the current
  step and return with stop_reason "preempted".

  Returns a summary dict (steps, timings, compile count, final metrics, and the final state).
  """
  preempt = _Preemption()
  preempt.install()
  try:
    return _train_and_evaluate(config, workdir, make_phase, preempt)
  finally:
    preempt.uninstall()


def _train_and_evaluate(config, workdir: str, make_phase, preempt: _Preemption) -> dict:
  t_start = time.time()
  ctc = config.train

  # ---------------------------------------------------------------- data
  store = open_dataset(config)
  train_ids, eval_ids = store.split(config.data.eval_fraction, seed=config.data.split_seed)

  # ---------------------------------------------------------------- mesh
  mesh = shd.make_mesh(config.mesh)
  shd.check_batch_divides(ctc.batch_size, mesh)
  phase = make_phase(config, store, mesh)
  local_batch = ctc.batch_size // jax.process_count()
  logging.info(
    "mesh %s over %d devices, %d processes; global batch %d (%d per process)",
    dict(mesh.shape),
    jax.device_count(),
    jax.process_count(),
    ctc.batch_size,
    local_batch,
  )

  # ---------------------------------------------------------------- train state
  p_train = st.TrainStep(phase.model_def, phase.loss_fn, phase.init_aux, config.optim, ctc.num_steps, mesh)
  base_key = jax.random.key(ctc.seed)
  rep = p_train.replicated
  # Constant inputs: numpy goes to every device once; arrays already placed (a frozen
  # earlier phase restored onto this mesh) keep their shardings.
  frozen = jax.tree.map(lambda x: x if isinstance(x, jax.Array) else jax.device_put(x, rep), phase.frozen())
  logging.info("model %s: %.2fM parameters", phase.name, phase.model_def.num_params() / 1e6)

  # ---------------------------------------------------------------- checkpoint and resume
  ckpt_dir = os.path.join(workdir, "checkpoints")
  long_window = int(config.data.get("long_window", 0))  # a dynamics-phase key; other phases lack it
  fields, pad = phase.read_fields, phase.window_pad  # data_pipelines/windows.py: every frame lies in a window

  def make_iter(window, batch=local_batch, ids=train_ids, last_anchor=None, demos=None):
    return data_loader.train_iterator(
      config.data.path,
      window=window,
      batch_size=batch,
      seed=config.data.seed,
      episode_ids=ids,
      process_index=jax.process_index(),
      process_count=jax.process_count(),
      num_threads=config.data.num_threads,
      prefetch=config.data.prefetch,
      fields=fields,
      pad=pad,
      last_anchor=last_anchor,
      demos=demos,
    )

  # The phase's streams (training/phase.py Streams): by default uniform windows, with
  # alternating batch lengths [P §3.4] when data.long_window is set: short windows most
  # steps, a long one every `long_every` steps and for the last `long_final_steps`;
  # exactly two step shapes.
  streams = phase.make_streams(TrainData(store, train_ids, eval_ids, local_batch, make_iter))
  eval_window = long_window or config.data.window
  eval_local = data_loader.eval_batches(
    config.data.path,
    window=eval_window,
    batch_size=local_batch,
    episode_ids=eval_ids,
    max_batches=config.eval.num_batches,
    fields=fields,
    pad=pad,
    process_index=jax.process_index(),
    process_count=jax.process_count(),
  )
  streams.label_eval(eval_local)  # e.g. flags the held-out windows of task-relevant episodes
  coverage = _coverage(store, train_ids, eval_ids, streams, eval_window, pad, phase.name)

  def batch_kind(iteration: int) -> str:
    if not long_window:
      return "data"
    if iteration > ctc.num_steps - ctc.long_final_steps:
      return "data_long"
    every = ctc.long_every
    return "data_long" if every and iteration % every == 0 else "data"

  data_iters = streams.iters  # every stream's position is saved with the state
  ckpt = Checkpointer(
    ckpt_dir, keep=ctc.keep_checkpoints, async_save=ctc.async_checkpoints, data_names=tuple(data_iters)
  )
  with jax.set_mesh(mesh):
    start_step, state = ckpt.restore_latest_good(p_train.abstract_state(), data_iters)
    if state is None:
      start_step = 0
      state = p_train.init(base_key)
      # e.g. phase 2 starts from the phase-1b weights (the default keeps the fresh params)
      state = dict(state, params=phase.warm_start(state["params"], p_train.param_shardings))
  # All validation passed: only now write into the workdir.
  write_config(workdir, config)
  logging.info("%s from step %d", "resuming" if start_step else "starting", start_step)

  # ---------------------------------------------------------------- jitted steps
  def eval_one(params, batch, frozen, sweep):
    return phase.eval_fn(params, batch, frozen) if sweep else phase.eval_fn(params, batch, frozen, sweep=False)

  p_eval = jax.jit(eval_one, static_argnums=3, out_shardings=rep)
  p_summary = jax.jit(
    lambda params, batch, rng, frozen: phase.summary_fn(params, batch, rng, frozen), out_shardings=rep
  )

  optional = tuple(f for f in streams.flags + ("valid_T",) if f not in phase.data_fields)

  def to_device(local):
    extra = tuple(f for f in optional if f in local)
    return data_loader.global_batch({f: local[f] for f in phase.data_fields + extra}, mesh)

  def evaluate(state) -> dict[str, float]:
    acc = mt.MeanMetrics()
    with jax.set_mesh(mesh):
      for i, b in enumerate(eval_local):
        sweep = not phase.eval_sweep_batches or i < phase.eval_sweep_batches
        out = jax.device_get(p_eval(state["params"], to_device(b), frozen, sweep))
        weights = out.pop("_weights", None)  # pooled over the batches' valid frames
        acc.update(out, skip_nan=True, weights=weights)
    return {f"eval/{k}": v for k, v in acc.compute_and_reset().items()}

  # ---------------------------------------------------------------- periodic actions
  writer = mt.create_writer(workdir)
  hooks = []
  if jax.process_index() == 0:
    from clu import periodic_actions  # lazy: imports TensorFlow

    hooks.append(
      periodic_actions.ReportProgress(num_train_steps=ctc.num_steps, writer=writer, every_steps=ctc.log_every)
    )
    if ctc.profile_steps > 0:
      hooks.append(
        periodic_actions.Profile(
          logdir=workdir, num_profile_steps=ctc.profile_steps, first_profile=start_step + ctc.profile_first
        )
      )

  # ---------------------------------------------------------------- the loop
  acc = mt.MeanMetrics()
  pending: list = []
  step = start_step
  stop_at = ctc.stop_at_step if ctc.stop_at_step > 0 else ctc.num_steps
  summary: dict[str, Any] = dict(start_step=start_step, coverage=coverage)
  eval_metrics: dict[str, float] = {}
  first_step_s = None
  t_after_first = None
  last_saved = start_step if start_step else -1
  stop_reason = "finished"
  try:
    while step < min(stop_at, ctc.num_steps):
      t0 = time.time()
      local = streams.next(batch_kind(step + 1))
      with jax.set_mesh(mesh):
        state, metrics = p_train(state, to_device(local), base_key, frozen)
      iteration = step + 1
      if first_step_s is None:
        jax.block_until_ready(state["step"])
        first_step_s = time.time() - t0  # includes the one compile
        t_after_first = time.time()
      pending.append(metrics)  # stays on device: no host sync inside the loop
      for h in hooks:
        h(iteration)
      if iteration % ctc.log_every == 0 or iteration == ctc.num_steps:
        for m in jax.device_get(pending):
          acc.update(m)
        pending = []
        values = acc.compute_and_reset()
        nonfinite = int(jax.device_get(state["nonfinite"]))
        values["skipped_steps"] = float(jax.device_get(state["skipped"]))
        writer.write_scalars(iteration, values)
        if nonfinite >= ctc.max_nonfinite:
          stop_reason = "nonfinite"
          raise FloatingPointError(
            f"{nonfinite} non-finite steps in a row at step {iteration} (limit "
            f"--config.train.max_nonfinite={ctc.max_nonfinite}); the last good checkpoint is kept"
          )
      if ctc.eval_every and iteration % ctc.eval_every == 0:
        eval_metrics = evaluate(state)
        writer.write_scalars(iteration, eval_metrics)
      if ctc.summary_every and iteration % ctc.summary_every == 0 and eval_local:
        write_summaries(writer, iteration, p_summary, state, to_device(eval_local[0]), base_key, frozen, mesh, workdir)
      step = iteration
      if preempt.agreed():
        stop_reason = "preempted"
        break
      if iteration % ctc.checkpoint_every == 0:
        _save(ckpt, iteration, state, data_iters, ctc)
        last_saved = iteration
    jax.block_until_ready(state)
    steps_timed = step - start_step - 1
    t_timed = time.time() - t_after_first if t_after_first else 0.0
    if step != last_saved and int(jax.device_get(state["nonfinite"])) == 0:
      _save(ckpt, step, state, data_iters, ctc, force=True)
    if stop_reason == "finished" and step >= ctc.num_steps:
      eval_metrics = evaluate(state)
      writer.write_scalars(step, eval_metrics)
      if eval_local:
        write_summaries(writer, step, p_summary, state, to_device(eval_local[0]), base_key, frozen, mesh, workdir)
  finally:
    ckpt.close()
    writer.flush()

  summary.update(
    step=step,
    stop_reason=stop_reason,
    compiles=p_train.compiles,
    first_step_s=first_step_s,
    step_s=(t_timed / steps_timed) if steps_timed > 0 else None,  # excludes the compiling step
    wall_s=time.time() - t_start,
    eval=eval_metrics,
    state=state,
  )
  if jax.process_index() == 0:
    keep = {k: v for k, v in summary.items() if k != "state"}
    (epath.Path(workdir) / "run_summary.json").write_text(json.dumps(keep, indent=2, default=str))
  logging.info("%s: step %d, %s", phase.name, step, {k: v for k, v in summary.items() if k != "state"})
  return summary


def _coverage(store, train_ids, eval_ids, streams: Streams, eval_window: int, pad: str, name: str) -> dict:
  """The share of episodes, frames, task-relevant episodes and reward/terminal frames that the
  phase's windows reach, per data stream and for the evaluation split; logged as one line each."""
  out = {}
  for kind, window in streams.windows.items():
    # e.g. a data mixture: its uniform and relevant windows together
    out[kind] = data_loader.window_coverage(store, train_ids, window, pad, extra_tables=streams.coverage_tables(kind))
  out["eval"] = data_loader.window_coverage(store, eval_ids, eval_window, pad)
  for kind, c in out.items():
    logging.info(
      "%s coverage (%s, %s windows): episodes %.1f%% of %d, frames %.1f%%, task-relevant episodes %.1f%% of %d, "
      "reward frames %.1f%%, terminal frames %.1f%%; windows per frame %.2f, per reward frame %.2f, "
      "per terminal frame %.2f",
      name,
      kind,
      pad,
      100 * c["episodes"],
      c["num_episodes"],
      100 * c["frames"],
      100 * c["relevant_episodes"],
      c["num_relevant_episodes"],
      100 * c["reward_frames"],
      100 * c["terminal_frames"],
      c["windows_per_frame"],
      c["windows_per_reward_frame"],
      c["windows_per_terminal_frame"],
    )
  return out


def _save(ckpt: Checkpointer, step: int, state, data_iters, ctc, force: bool = False):
  # A non-finite step never changes the state (make_train_step), so what is saved is finite.
  ckpt.save(step, state, data_iters, force=force)
  if not ctc.async_checkpoints:
    ckpt.wait()


def write_summaries(writer, step, p_summary, state, batch, key, frozen, mesh, workdir):
  """Image grids to TensorBoard. [N,h,w,c] arrays tile 8 wide; [R,T,h,w,c] arrays are R
  videos of T frames: one strip per row, and a GIF per array under workdir/videos."""
  with jax.set_mesh(mesh):
    images = jax.device_get(p_summary(state["params"], batch, jax.random.fold_in(key, step), frozen))
  grids = {}
  for name, v in images.items():
    v = np.asarray(v)
    if v.ndim == 5:
      grids[name] = mt.image_grid(v.reshape((-1,) + v.shape[2:]), cols=v.shape[1])[None]
      if jax.process_index() == 0:
        mt.write_gif(os.path.join(workdir, "videos", f"{name}_{step:07d}.gif"), v)
    else:
      grids[name] = mt.image_grid(v, cols=min(8, len(v)))[None]
  if grids:
    writer.write_images(step, grids)
