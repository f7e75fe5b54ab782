"""Real multi-process runs on loopback (gloo).

1. 1, 2 and 4 processes reach the same parameters: each run trains the tiny tokenizer for
   a few steps on the same 4 CPU devices in total (4x1, 2x2 and 1x4 process x device
   layouts). The loader gives every process a block of each global batch, so the global
   batches are identical and so must be the results. The checkpoints written by 2 and 4
   processes are then restored here, by one process with a different mesh. The dynamics
   step is checked the same way (1 and 2 processes) on latents of the 1-process tokenizer.
2. A process killed mid-run makes the other exit (non-zero) within the heartbeat timeout
   instead of hanging, and restarting both resumes from the last checkpoint.
3. Only process 0, which writes TensorBoard, imports TensorFlow (seen with -X importtime). The
   runs of the other tests write no TensorBoard events (tests/run_main.py): no TensorFlow import.

Runs stop with --config.train.stop_at_step (as if interrupted) so that no process compiles
the end-of-run evaluation. Single-process runs share the session's persistent compilation
cache (tests/conftest.py), so a later session loads their steps instead of compiling them;
multi-process runs compile (see `_launch`).
"""

import json
import os
import re
import socket
import subprocess
import sys
import time

import jax
import ml_collections
import numpy as np
import pytest

from data_pipelines.episodes import EpisodeStore
from dreamer4 import sharding as shd
from dreamer4.training import state as st
from dreamer4.training.checkpoint import restore_params

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 2
NUM_STEPS = 1000  # the schedule's length; runs stop early at STEPS (no end-of-run evaluation)
HEARTBEAT_S = 10


@pytest.fixture(scope="module")
def cache_dir():
  """The session's persistent compilation cache (tests/conftest.py: .cache/jax, kept between
  sessions): a later session loads the single-process runs' steps instead of compiling them."""
  return jax.config.jax_compilation_cache_dir


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _launch(
  config, workdir, nproc, tmp_path, cache_dir, *, devices=4, stop_at=STEPS, extra=(), tag="", importtime=False
):
  """nproc processes of dreamer4.main, logging into tmp_path; importtime: `python -X importtime`
  (every module each process imports is listed in its log), and process 0 writes TensorBoard;
  else the processes run through tests/run_main.py (no TensorBoard: no TensorFlow import)."""
  port = _free_port()
  env = dict(
    os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3", JAX_COMPILATION_CACHE_DIR=cache_dir
  )
  env.pop("XLA_FLAGS", None)
  env.pop("JAX_NUM_CPU_DEVICES", None)
  if nproc > 1:
    # No persistent cache for a multi-process run: only process 0 writes it, and on CPU an
    # entry's key holds its process's devices, so the others never hit it. Process 0 loading its
    # steps while they compile theirs would reach the first collective that much earlier, and a
    # CPU (gloo) collective gives up after 30 s ("GetKeyValue() timed out"). All compile, as
    # in a fresh session, and the slowest of them sets the pace either way.
    env["JAX_ENABLE_COMPILATION_CACHE"] = "false"
  procs = []
  for pid in range(nproc):
    cmd = [
      sys.executable,
      *(["-X", "importtime"] if importtime else []),
      "-m",
      "dreamer4.main" if importtime else "tests.run_main",
      f"--config={config}",
      f"--workdir={workdir}",
      f"--config.train.num_steps={NUM_STEPS}",
      f"--config.train.stop_at_step={stop_at}",
      "--config.train.log_every=1",
      "--config.data.num_threads=1",
      f"--cpu_devices={devices // nproc}",
      *extra,
    ]
    if nproc > 1:
      cmd += [f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={nproc}", f"--process_id={pid}"]
    log = open(tmp_path / f"{os.path.basename(workdir)}{tag}_{pid}.log", "w")
    procs.append((subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT), log))
  return procs


def _wait_ok(procs, tmp_path, timeout=900):
  for p, log in procs:
    p.wait(timeout=timeout)
    log.close()
    assert p.returncode == 0, open(log.name).read()[-3000:]


def _restore_all(model_def, runs, mesh):
  abstract = st.to_abstract(model_def.abstract_params, model_def.param_shardings(mesh))
  out = {}
  for n, w in runs.items():
    with jax.set_mesh(mesh):
      step, p = restore_params(os.path.join(w, "checkpoints"), abstract)
    assert step == STEPS, (n, step)
    out[n] = jax.device_get(p)
  return out


def _assert_same(params, ref, others):
  for n in others:
    for a, b in zip(jax.tree.leaves(params[ref]), jax.tree.leaves(params[n])):
      np.testing.assert_allclose(a, b, rtol=0, atol=2e-5)


@pytest.fixture(scope="module")
def tokenizer_runs(tiny_store, tmp_path_factory, cache_dir):
  """Workdirs of the tiny tokenizer trained by 1, 2 and 4 processes (4 devices in all)."""
  tmp_path = tmp_path_factory.mktemp("tokenizer_runs")
  runs = {n: str(tmp_path / f"p{n}") for n in (1, 2, 4)}
  procs = {
    n: _launch(
      "configs/tokenizer.py:tiny",
      w,
      n,
      tmp_path,
      cache_dir,
      extra=[f"--config.data.path={tiny_store}"],
      importtime=True,
    )
    for n, w in runs.items()
  }
  for group in procs.values():
    _wait_ok(group, tmp_path)
  return runs


def test_only_process_zero_imports_tensorflow(tokenizer_runs):
  """TensorFlow (through clu's TensorBoard writer: about 10 s of CPU per process) is imported by
  the one process that writes TensorBoard, process 0, and by no other."""
  for n, w in tokenizer_runs.items():
    for pid in range(n):
      log = open(f"{w}_{pid}.log").read()
      assert re.search(r"^import time:.*\| +dreamer4\.training\.metrics$", log, re.M), log[-3000:]  # importtime worked
      imported = re.search(r"^import time:.*\| +tensorflow$", log, re.M) is not None
      assert imported == (pid == 0), (n, pid, "imported" if imported else "did not import")


def _mesh():
  return shd.make_mesh(ml_collections.ConfigDict({"preset": "cpu8", "shape": None}))  # 1 process, (2,2,2)


def test_tokenizer_one_two_four_processes_agree(tokenizer_runs, tiny_store):
  from configs import tokenizer
  from dreamer4.phases.tokenizer import make_phase

  cfg = tokenizer.get_config("tiny")
  cfg.data.path = tiny_store
  phase = make_phase(cfg, EpisodeStore.open(tiny_store))
  params = _restore_all(phase.model_def, tokenizer_runs, _mesh())
  _assert_same(params, 1, (2, 4))
  # The runs really trained: parameters moved away from their initial values.
  init = jax.device_get(phase.model_def.init_params(jax.random.key(0)))
  assert max(float(np.abs(a - b).max()) for a, b in zip(jax.tree.leaves(params[1]), jax.tree.leaves(init))) > 0


def test_dynamics_one_two_processes_agree(tokenizer_runs, tmp_path, cache_dir):
  """The dynamics step on the latents of the 1-process tokenizer, in a store of long episodes
  (held-out windows of data.long_window must exist); encode writes the latents into it."""
  from configs import dynamics, encode
  from data_pipelines.collect import collect
  from dreamer4.phases.dynamics import make_phase
  from dreamer4.phases.encode import encode_dataset

  store, tok = str(tmp_path / "store"), tokenizer_runs[1]
  collect("toy", store, episodes=24, seed=0, skills=(0.3, 0.0), size=16)
  ecfg = encode.get_config()
  ecfg.data.path, ecfg.tokenizer_workdir = store, tok
  encode_dataset(ecfg, str(tmp_path / "encode"))

  runs = {n: str(tmp_path / f"d{n}") for n in (1, 2)}
  procs = {
    n: _launch(
      "configs/dynamics.py:tiny",
      w,
      n,
      tmp_path,
      cache_dir,
      extra=[f"--config.data.path={store}", f"--config.tokenizer_workdir={tok}"],
    )
    for n, w in runs.items()
  }
  for group in procs.values():
    _wait_ok(group, tmp_path)
  cfg = dynamics.get_config("tiny")
  cfg.data.path, cfg.tokenizer_workdir = store, tok
  mesh = _mesh()
  phase = make_phase(cfg, EpisodeStore.open(store), mesh)
  _assert_same(_restore_all(phase.model_def, runs, mesh), 1, (2,))


def _finished_steps(workdir):
  d = os.path.join(workdir, "checkpoints")
  return sorted(int(n) for n in os.listdir(d) if n.isdigit()) if os.path.isdir(d) else []


def test_killed_process_stops_the_other_and_restart_resumes(tiny_store, tmp_path, cache_dir):
  tok = "configs/tokenizer.py:tiny"
  workdir = str(tmp_path / "hb")
  common = [
    f"--config.data.path={tiny_store}",
    f"--heartbeat_timeout={HEARTBEAT_S}",
    "--config.train.checkpoint_every=2",
    "--config.train.async_checkpoints=false",
  ]
  procs = _launch(tok, workdir, 2, tmp_path, cache_dir, stop_at=NUM_STEPS, extra=common)
  deadline = time.time() + 600
  while len(_finished_steps(workdir)) < 2:  # training is under way: checkpoints 2 and 4 exist
    assert all(p.poll() is None for p, _ in procs), open(procs[0][1].name).read()[-3000:]
    assert time.time() < deadline, "no checkpoint within 600 s"
    time.sleep(0.5)
  procs[1][0].kill()  # SIGKILL: no chance to say goodbye
  t_kill = time.time()
  survivor, log = procs[0]
  try:
    survivor.wait(timeout=HEARTBEAT_S + 50)
  except subprocess.TimeoutExpired:
    survivor.kill()
    pytest.fail(f"the surviving process still runs {HEARTBEAT_S + 50} s after its peer was killed")
  took = time.time() - t_kill
  for p, lg in procs:
    p.wait()
    lg.close()
  assert survivor.returncode != 0
  assert took < HEARTBEAT_S + 50, took

  last = _finished_steps(workdir)[-1]
  procs = _launch(tok, workdir, 2, tmp_path, cache_dir, stop_at=last + 2, extra=common, tag="_restart")
  _wait_ok(procs, tmp_path)
  summary = json.loads(open(os.path.join(workdir, "run_summary.json")).read())
  assert summary["start_step"] == last and summary["step"] == last + 2, summary


def test_four_process_checkpoint_resumed_by_two_processes_on_another_mesh(
  tokenizer_runs, tiny_store, tmp_path, cache_dir
):
  """The 4-process run's checkpoint (mesh (4,1,1)) continued by 2 processes on mesh (1,4,1) equals the
  1-process run continued on its own mesh: params, optimiser state and data position all restored."""
  import shutil

  from configs import tokenizer
  from dreamer4.phases.tokenizer import make_phase

  runs, procs = {}, {}
  for n, nproc, extra in ((1, 1, []), (4, 2, ["--config.mesh.preset=gpu8"])):  # both at once
    runs[n] = w = str(tmp_path / f"resume_p{n}")
    shutil.copytree(tokenizer_runs[n], w)
    procs[n] = _launch(
      "configs/tokenizer.py:tiny",
      w,
      nproc,
      tmp_path,
      cache_dir,
      stop_at=STEPS + 1,
      extra=[f"--config.data.path={tiny_store}", *extra],
      tag="_resume",
    )
  for n, group in procs.items():
    _wait_ok(group, tmp_path)
    log = open(tmp_path / f"resume_p{n}_resume_0.log").read()
    assert f"resuming from step {STEPS}" in log
  cfg = tokenizer.get_config("tiny")
  cfg.data.path = tiny_store
  phase = make_phase(cfg, EpisodeStore.open(tiny_store))
  mesh = _mesh()
  abstract = st.to_abstract(phase.model_def.abstract_params, phase.model_def.param_shardings(mesh))
  params = {}
  for n, w in runs.items():
    with jax.set_mesh(mesh):
      step, p = restore_params(os.path.join(w, "checkpoints"), abstract)
    assert step == STEPS + 1
    params[n] = jax.device_get(p)
  _assert_same(params, 1, (4,))
