"""Real multi-process runs on loopback (gloo): 1, 2 and 4 processes reach the same parameters.

Each run trains the tiny tokenizer for a few steps on the same 4 CPU devices in total
(4x1, 2x2 and 1x4 process x device layouts). The loader gives every process a block of
each global batch, so the global batches are identical and so must be the results. The
checkpoints written by 2 and 4 processes are then restored here, by one process with a
different mesh.
"""

import os
import socket
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest

from data_pipelines.episodes import EpisodeStore
from dreamer4 import sharding as shd
from dreamer4.phases.tokenizer import TokenizerPhase
from dreamer4.training import state as st
from dreamer4.training.checkpoint import restore_params

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 2


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _launch(store, workdir, nproc, tmp_path):
  port = _free_port()
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  env.pop("XLA_FLAGS", None)
  env.pop("JAX_NUM_CPU_DEVICES", None)
  procs = []
  for pid in range(nproc):
    cmd = [sys.executable, "-m", "dreamer4.main", "--config=configs/tokenizer.py:tiny", f"--workdir={workdir}",
           f"--config.data.path={store}", f"--config.train.num_steps={STEPS}", "--config.train.checkpoint_every=1000",
           "--config.train.log_every=1", "--config.data.num_threads=1",
           f"--cpu_devices={4 // nproc}"]
    if nproc > 1:
      cmd += [f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={nproc}", f"--process_id={pid}"]
    log = open(tmp_path / f"{os.path.basename(workdir)}_{pid}.log", "w")
    procs.append((subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT), log))
  return procs


def test_one_two_four_processes_agree(tiny_store, tmp_path):
  runs = {n: str(tmp_path / f"p{n}") for n in (1, 2, 4)}
  procs = {n: _launch(tiny_store, w, n, tmp_path) for n, w in runs.items()}
  for n, group in procs.items():
    for p, log in group:
      p.wait(timeout=600)
      log.close()
      assert p.returncode == 0, (tmp_path / f"p{n}_0.log").read_text()[-3000:]

  from configs import tokenizer
  cfg = tokenizer.get_config("tiny")
  cfg.data.path = tiny_store
  phase = TokenizerPhase(cfg, EpisodeStore.open(tiny_store))
  mesh = shd.make_mesh(ml_collections.ConfigDict({"preset": "cpu8", "shape": None}))  # 1 process, (2,2,2)
  abstract = st.to_abstract(phase.model_def.abstract_params, phase.model_def.param_shardings(mesh))
  params = {}
  for n, w in runs.items():
    with jax.set_mesh(mesh):
      step, p = restore_params(os.path.join(w, "checkpoints"), abstract)
    assert step == STEPS
    params[n] = jax.device_get(p)
  for n in (2, 4):
    for a, b in zip(jax.tree.leaves(params[1]), jax.tree.leaves(params[n])):
      np.testing.assert_allclose(a, b, rtol=0, atol=2e-5)
  # The runs really trained: parameters moved away from their initial values.
  moved = max(float(np.abs(a).max()) for a in jax.tree.leaves(params[1]))
  assert moved > 0
