"""The trainer end to end on the tiny tokenizer: sharding, checkpoints, resume, bad input."""

import os

import jax
import numpy as np
import pytest

from data_pipelines import loader
from data_pipelines.episodes import EpisodeStore
from dreamer4 import sharding as shd
from dreamer4.errors import CheckpointError, ConfigError
from dreamer4.phases.tokenizer import make_phase
from dreamer4.training import metrics as mt
from dreamer4.training import state as st
from dreamer4.training.checkpoint import Checkpointer
from dreamer4.training.trainer import train_and_evaluate


def _mesh(shape, n):
  import ml_collections

  return shd.make_mesh(ml_collections.ConfigDict({"preset": "data", "shape": shape}), jax.devices()[:n])


def _snapshot(root):
  out = {}
  for dirpath, _, files in os.walk(root):
    for f in files:
      p = os.path.join(dirpath, f)
      out[p] = (os.path.getsize(p), os.path.getmtime(p))
  return out


def _train_step(phase, config, mesh):
  return st.TrainStep(phase.model_def, phase.loss_fn, phase.init_aux, config.optim, 10, mesh)


def _one_batch(config):
  store = EpisodeStore.open(config.data.path)
  train_ids, _ = store.split(0.1)
  it = loader.train_iterator(
    config.data.path, window=config.data.window, batch_size=config.train.batch_size, seed=0, episode_ids=train_ids
  )
  return store, next(it)


def test_sharded_step_matches_single_device(tiny_config):
  store, local = _one_batch(tiny_config)
  phase = make_phase(tiny_config, store)
  frozen_np = phase.frozen()
  results = {}
  for name, shape, n in (("single", (1, 1, 1), 1), ("sharded", (2, 2, 2), 8)):
    mesh = _mesh(shape, n)
    step = _train_step(phase, tiny_config, mesh)
    state = step.init(jax.random.key(0))
    with jax.set_mesh(mesh):
      batch = loader.global_batch({"frames": local["frames"]}, mesh)
      frozen = jax.device_put(frozen_np, step.replicated)
      loss_and_grads = jax.jit(
        jax.value_and_grad(lambda p: phase.loss_fn(p, state["aux"], batch, jax.random.key(1), frozen)[0])
      )
      loss, grads = loss_and_grads(state["params"])
    if name == "sharded":  # the FSDP/tensor rules really split parameters and their gradients
      specs = [s.spec for s in jax.tree.leaves(step.param_shardings)]
      assert sum(any(a is not None for a in spec) for spec in specs) >= 10
    results[name] = jax.device_get((loss, grads))
  (l1, g1), (l8, g8) = results["single"], results["sharded"]
  assert abs(float(l1) - float(l8)) < 1e-5 * max(1.0, abs(float(l1)))
  gmax = max(float(np.abs(g).max()) for g in jax.tree.leaves(g1))
  gdiff = max(float(np.abs(a - b).max()) for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g8)))
  assert gmax > 0 and gdiff <= 1e-4 * gmax, (gdiff, gmax)


def test_checkpoint_restores_onto_other_meshes(tiny_config, tmp_path):
  store, _ = _one_batch(tiny_config)
  phase = make_phase(tiny_config, store)
  state = _train_step(phase, tiny_config, _mesh((2, 2, 2), 8)).init(jax.random.key(3))
  ckpt = Checkpointer(str(tmp_path / "ck"), data_names=())
  ckpt.save(7, state)
  ckpt.close()
  want = jax.device_get(state)
  for shape, n in (((8, 1, 1), 8), ((1, 2, 2), 4), ((1, 1, 1), 1)):
    mesh2 = _mesh(shape, n)
    ck2 = Checkpointer(str(tmp_path / "ck"), data_names=())
    with jax.set_mesh(mesh2):
      got = ck2.restore(7, _train_step(phase, tiny_config, mesh2).abstract_state())
    ck2.close()
    leaves = jax.tree.leaves(got)
    assert all(set(x.sharding.device_set) <= set(jax.devices()[:n]) for x in leaves)
    for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(jax.device_get(got))):
      np.testing.assert_array_equal(a, b)


def test_resume_matches_uninterrupted_run(tiny_config, tmp_path):
  straight = train_and_evaluate(tiny_config, str(tmp_path / "a"), make_phase)
  assert straight["step"] == tiny_config.train.num_steps and straight["compiles"] == 1
  # The coverage line: every episode, frame, reward and terminal frame of both splits is reached.
  import json

  written = json.loads((tmp_path / "a" / "run_summary.json").read_text())["coverage"]
  assert set(written) == {"data", "eval"}
  for kind, c in written.items():
    for key in ("episodes", "frames", "relevant_episodes", "reward_frames", "terminal_frames"):
      assert c[key] == 1.0, (kind, key)

  cfg = tiny_config.copy_and_resolve_references()
  cfg.train.stop_at_step = 3
  first = train_and_evaluate(cfg, str(tmp_path / "b"), make_phase)
  assert first["step"] == 3 and first["stop_reason"] == "finished"
  cfg.train.stop_at_step = 0
  second = train_and_evaluate(cfg, str(tmp_path / "b"), make_phase)
  assert second["start_step"] == 3 and second["step"] == tiny_config.train.num_steps
  assert second["compiles"] == 1

  a = jax.device_get(straight["state"])
  b = jax.device_get(second["state"])
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, rtol=0, atol=1e-6)
  # Real TensorBoard event files with the training scalars.
  from tensorboard.backend.event_processing import event_accumulator

  events = [f for f in os.listdir(tmp_path / "a") if f.startswith("events.out.tfevents")]
  assert events
  acc = event_accumulator.EventAccumulator(str(tmp_path / "a"), size_guidance={"tensors": 0})
  acc.Reload()
  tags = set(acc.Tags()["tensors"])
  assert {"loss", "mse", "eval/psnr"} <= tags, tags
  assert np.isfinite(straight["eval"]["eval/psnr"])

  # A workdir holding an incompatible model is refused and left untouched.
  before = _snapshot(tmp_path / "a")
  bad = tiny_config.copy_and_resolve_references()
  bad.model.width = 48
  with pytest.raises(CheckpointError, match=r"shape .* use a new --workdir"):
    train_and_evaluate(bad, str(tmp_path / "a"), make_phase)
  assert _snapshot(tmp_path / "a") == before


@pytest.mark.parametrize(
  "shape,batch,match",
  [
    ((3, 1, 1), 8, r"mesh.shape=\(3, 1, 1\) needs a multiple of 3 devices"),
    ((-1, 1, 1), 6, r"batch_size=6 does not divide over the 8 data-parallel devices"),
  ],
)
def test_bad_mesh_or_batch_stops_before_writing(tiny_config, tmp_path, shape, batch, match):
  cfg = tiny_config.copy_and_resolve_references()
  cfg.mesh.shape = shape
  cfg.train.batch_size = batch
  with pytest.raises(ConfigError, match=match):
    train_and_evaluate(cfg, str(tmp_path / "w"), make_phase)
  assert not (tmp_path / "w").exists()


def test_mean_metrics_pools_weighted_updates():
  """Two evaluation batches: 3 of 4 frames right over 4 valid frames, then 1 of 1 over 1 frame.
  Pooled: 4 / 5 = 0.8 (the unweighted mean of the batch means would read (0.75 + 1) / 2 = 0.875).
  A NaN (no valid frame) and a zero weight are left out; unweighted names keep the plain mean."""
  acc = mt.MeanMetrics()
  acc.update({"acc": 0.75, "loss": 2.0, "empty": np.nan}, skip_nan=True, weights={"acc": 4, "empty": 0})
  acc.update({"acc": 1.0, "loss": 4.0, "empty": 0.5}, skip_nan=True, weights={"acc": 1, "empty": 0})
  out = acc.compute_and_reset()
  assert out["acc"] == pytest.approx(0.8) and out["loss"] == pytest.approx(3.0) and "empty" not in out
