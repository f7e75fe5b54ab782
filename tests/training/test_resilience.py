"""Fault injection: damaged checkpoints, non-finite losses, SIGTERM. Nothing is lost."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dreamer4.phases.tokenizer import make_phase
from dreamer4.training.checkpoint import Checkpointer
from dreamer4.training.trainer import train_and_evaluate

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Restoring the deliberately torn checkpoint fails on one shard and leaves orbax's other pending
# shard reads (coroutines) to be closed when they are collected, which pytest reports as unraisable
# exceptions in whichever test of this file runs then (0 to 100 of them, by timing). The fallback
# itself is asserted in test_damaged_latest_checkpoint_falls_back_to_previous.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


@pytest.fixture
def one_device_config(tiny_config):
  cfg = tiny_config.copy_and_resolve_references()
  cfg.mesh.num_devices = 1  # fault handling does not depend on the mesh; one device compiles fastest
  return cfg


def _largest_file(root):
  best = None
  for dirpath, _, files in os.walk(root):
    for f in files:
      p = os.path.join(dirpath, f)
      if best is None or os.path.getsize(p) > os.path.getsize(best):
        best = p
  return best


def test_damaged_latest_checkpoint_falls_back_to_previous(one_device_config, tmp_path):
  cfg = one_device_config
  work = str(tmp_path / "run")
  first = train_and_evaluate(cfg, work, make_phase)
  ckdir = os.path.join(work, "checkpoints")
  assert sorted(int(d) for d in os.listdir(ckdir) if d.isdigit()) == [3, 6]
  victim = _largest_file(os.path.join(ckdir, "6"))
  size = os.path.getsize(victim)
  with open(victim, "r+b") as f:  # a torn write: the second half of the biggest file is gone
    f.truncate(size // 2)
  again = train_and_evaluate(cfg, work, make_phase)
  assert again["start_step"] == 3 and again["step"] == 6
  assert os.path.isdir(os.path.join(ckdir, "6.damaged"))  # kept for inspection, not deleted
  for a, b in zip(
    jax.tree.leaves(jax.device_get(first["state"]["params"])), jax.tree.leaves(jax.device_get(again["state"]["params"]))
  ):
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


def _nan_phase(probability):
  def factory(config, store, mesh):
    phase = make_phase(config, store, mesh)
    loss_fn = phase.loss_fn

    def poisoned(params, aux, batch, rng, frozen):
      loss, rest = loss_fn(params, aux, batch, rng, frozen)
      bad = jax.random.uniform(jax.random.fold_in(rng, 99)) < probability
      return jnp.where(bad, jnp.nan, loss), rest

    phase.loss_fn = poisoned
    return phase

  return factory


def test_nonfinite_steps_are_skipped_and_counted(one_device_config, tmp_path):
  cfg = one_device_config
  cfg.train.max_nonfinite = 100
  out = train_and_evaluate(cfg, str(tmp_path / "run"), _nan_phase(0.5))
  state = jax.device_get(out["state"])
  skipped, steps = int(state["skipped"]), int(state["step"])
  assert 0 < skipped < cfg.train.num_steps and steps + skipped == cfg.train.num_steps
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(state["params"]))


def test_too_many_nonfinite_steps_stop_with_last_good_checkpoint(one_device_config, tmp_path):
  cfg = one_device_config
  work = str(tmp_path / "run")
  cfg.train.stop_at_step = 3
  good = jax.device_get(train_and_evaluate(cfg, work, make_phase)["state"]["params"])
  cfg.train.stop_at_step = 0
  cfg.train.max_nonfinite = 2
  with pytest.raises(
    FloatingPointError, match=r"\d+ non-finite steps in a row .*max_nonfinite=2.* last good checkpoint is kept"
  ):
    train_and_evaluate(cfg, work, _nan_phase(1.0))
  ck = Checkpointer(os.path.join(work, "checkpoints"), data_names=())
  assert ck.all_steps() == [3]
  ck.close()
  from data_pipelines.episodes import EpisodeStore
  from dreamer4.training.checkpoint import restore_params

  phase = make_phase(cfg, EpisodeStore.open(cfg.data.path))
  _, params = restore_params(
    os.path.join(work, "checkpoints"),
    jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=jax.sharding.SingleDeviceSharding(jax.devices()[0])),
      phase.model_def.abstract_params,
    ),
  )
  for a, b in zip(jax.tree.leaves(good), jax.tree.leaves(jax.device_get(params))):
    np.testing.assert_array_equal(a, b)


def _main_cmd(store, work, stop_at=0):
  """A run of the tiny tokenizer (a 1000-step schedule); stop_at > 0: it stops there, as if
  interrupted (no end-of-run evaluation to compile)."""
  return [
    sys.executable,
    "-m",
    "tests.run_main",  # dreamer4.main without TensorBoard (no TensorFlow import)
    f"--config={ROOT}/configs/tokenizer.py:tiny",
    f"--workdir={work}",
    f"--config.data.path={store}",
    "--config.train.num_steps=1000",
    f"--config.train.stop_at_step={stop_at}",
    "--config.mesh.num_devices=1",
    "--config.train.checkpoint_every=1000",
    "--config.train.log_every=1",
  ]


def _env(tmp_path):
  env = dict(
    os.environ,
    PYTHONPATH=ROOT,
    JAX_PLATFORMS="cpu",
    TF_CPP_MIN_LOG_LEVEL="3",
    # The session's persistent compilation cache (tests/conftest.py): a later session loads the step.
    JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir,
  )
  env.pop("XLA_FLAGS", None)
  return env


def test_sigterm_saves_the_current_step_and_restart_loses_nothing(tiny_store, tmp_path):
  work = tmp_path / "run"
  # A relative --workdir (run from tmp_path): checkpoints must still work (Orbax wants absolute paths).
  proc = subprocess.Popen(
    _main_cmd(tiny_store, "run"),
    cwd=tmp_path,
    env=_env(tmp_path),
    stdout=subprocess.DEVNULL,
    stderr=subprocess.PIPE,
    text=True,
  )
  deadline = time.time() + 240
  # config.json is written once the state exists, right before the loop starts.
  while not (work / "config.json").exists() and proc.poll() is None and time.time() < deadline:
    time.sleep(0.2)
  time.sleep(1.0)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=240)
  assert proc.returncode == 0, err[-2000:]
  summary = json.loads((work / "run_summary.json").read_text())
  assert summary["stop_reason"] == "preempted" and 1 <= summary["step"] < 50
  ck = Checkpointer(str(work / "checkpoints"), data_names=())
  assert ck.latest_step() == summary["step"]  # the step it stopped at was saved: nothing lost
  ck.close()
  cmd = _main_cmd(tiny_store, "run", stop_at=summary["step"] + 2)
  done = subprocess.run(cmd, cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-2000:]
  resumed = json.loads((work / "run_summary.json").read_text())
  assert resumed["start_step"] == summary["step"] and resumed["step"] == summary["step"] + 2
