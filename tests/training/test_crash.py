"""Crash resilience: `kill -9` of a training process at seeded-random moments loses nothing.

One run is killed five times (during start-up / restore / compile, while an asynchronous
checkpoint is being written, between checkpoints) and restarted after each kill; every
restart must resume from the newest committed checkpoint, and the final state (parameters,
optimiser moments, counters, data-iterator position) must equal an uninterrupted run's.

The crashed run goes through tests/training/slow_save.py (DREAMER4_TEST_SLOW_SAVE_S): each
asynchronous save then stays uncommitted, in `<step>.orbax-checkpoint-tmp`, for that many
seconds, so the mid-write kills land inside the write, not by luck.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
import warnings

import jax
import numpy as np
import orbax.checkpoint as ocp

from tests.training.slow_save import SLOW_SAVE_ENV

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SEED = 20240611
NUM_STEPS = 10  # every run stops here (--config.train.stop_at_step): no end-of-run evaluation to compile
SCHEDULE_STEPS = 1000  # the schedule's length
SLOW_SAVE_S = 0.6
TMP = ".orbax-checkpoint-tmp"


def _cmd(store, work, slow: bool = False):
  # Both: dreamer4.main without TensorBoard (no TensorFlow import); slow_save: slow commits too.
  main = "tests.training.slow_save" if slow else "tests.run_main"
  return [
    sys.executable,
    "-m",
    main,
    f"--config={ROOT}/configs/tokenizer.py:tiny",
    f"--workdir={work}",
    f"--config.data.path={store}",
    f"--config.train.num_steps={SCHEDULE_STEPS}",
    f"--config.train.stop_at_step={NUM_STEPS}",
    "--config.mesh.num_devices=1",
    "--config.train.checkpoint_every=1",
    "--config.train.log_every=1000",
  ]


def _env(slow: bool):
  env = dict(
    os.environ,
    PYTHONPATH=ROOT,
    JAX_PLATFORMS="cpu",
    TF_CPP_MIN_LOG_LEVEL="3",
    # One persistent compilation cache for every subprocess (and this session): after the first
    # compile, restarts load the train step, and every smaller program, instead of compiling it.
    JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir,
    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
  )
  env.pop("XLA_FLAGS", None)
  env.pop(SLOW_SAVE_ENV, None)
  if slow:
    env[SLOW_SAVE_ENV] = str(SLOW_SAVE_S)
  return env


def _committed(ckdir) -> list[int]:
  return sorted(int(d) for d in os.listdir(ckdir) if d.isdigit()) if os.path.isdir(ckdir) else []


def _in_flight(ckdir) -> dict[int, tuple[int, int]]:
  """step -> identity (inode, mtime) of each uncommitted `<step>.orbax-checkpoint-tmp*` directory."""
  out = {}
  for d in os.listdir(ckdir) if os.path.isdir(ckdir) else []:
    if TMP in d:
      try:
        st = os.stat(os.path.join(ckdir, d))
      except FileNotFoundError:  # committed (renamed) meanwhile
        continue
      out[int(d.split(".")[0])] = (st.st_ino, st.st_mtime_ns)
  return out


def _start_line(log_path) -> int | None:
  """The step the run said it started from ("starting/resuming from step N"), if it got there."""
  m = re.search(r"(?:starting|resuming) from step (\d+)", open(log_path, errors="replace").read())
  return int(m.group(1)) if m else None


def _wait_for(cond, proc, timeout=300.0, poll=0.01):
  deadline = time.time() + timeout
  while time.time() < deadline:
    if cond():
      return True
    if proc.poll() is not None:
      return False
    time.sleep(poll)
  raise TimeoutError("the training subprocess did not reach the kill point in time")


def _plan(rng) -> list[tuple[str, float]]:
  """Five kills with seeded-random delays: the first during start-up (imports, while the
  reference compiles the step that every later run then loads from the compilation cache),
  then, in seeded-random order, two inside a checkpoint write, one after a commit, and one
  more of any kind."""
  rest = ["write", "write", "after", str(rng.choice(["write", "after", "startup"]))]
  return [("startup", float(rng.random()))] + [(rest[i], float(rng.random())) for i in rng.permutation(4)]


def _state(ckdir, step):
  """Every array of the saved train state of `step`, as numpy, keyed by path."""
  with warnings.catch_warnings():  # "sharding info not provided": one CPU device, as when saved
    warnings.simplefilter("ignore", UserWarning)
    tree = ocp.PyTreeCheckpointer().restore(os.path.join(ckdir, str(step), "state"))
  flat, _ = jax.tree_util.tree_flatten_with_path(jax.device_get(tree))
  return {jax.tree_util.keystr(p): np.asarray(v) for p, v in flat}


def test_kill9_at_random_moments_then_restart_loses_nothing(tiny_store, tmp_path):
  t_begin = time.time()
  rng = np.random.default_rng(SEED)
  ref_work, work = tmp_path / "reference", tmp_path / "crashed"
  ckdir = str(work / "checkpoints")
  # The uninterrupted reference runs beside the crash series (it is the same computation).
  ref_log = open(tmp_path / "reference.log", "w")
  ref = subprocess.Popen(
    _cmd(tiny_store, ref_work), cwd=ROOT, env=_env(slow=False), stdout=ref_log, stderr=subprocess.STDOUT
  )
  try:
    kills = []
    for n, (kind, u) in enumerate(_plan(rng)):
      if n == 1:  # let the reference compile alone first (two compiles at once on 2 cores are slow)
        _wait_for(lambda: _committed(str(ref_work / "checkpoints")), ref, timeout=400)
      done = _committed(ckdir)
      last = done[-1] if done else 0
      # Targets stay ahead of the committed step (so each kill point is still to come)
      # and short of the end (so the kill lands before the run finishes).
      target = min(last + 1 + int(rng.integers(0, 3)), NUM_STEPS - 1)
      if kind != "startup" and target <= last:
        kind = "startup"
      stale = _in_flight(ckdir)
      log_path = tmp_path / f"crash{n}.log"
      with open(log_path, "w") as log:
        proc = subprocess.Popen(
          _cmd(tiny_store, work, slow=True), cwd=ROOT, env=_env(slow=True), stdout=log, stderr=subprocess.STDOUT
        )
        if kind == "startup":  # a random moment in imports / restore / compile / first steps
          time.sleep(0.5 + 6.0 * u)
        elif kind == "write":  # inside the asynchronous write of step `target`
          # (a directory of this name left by an earlier kill does not count: wait for a new one)
          _wait_for(lambda: target in _in_flight(ckdir) and _in_flight(ckdir)[target] != stale.get(target), proc)
          time.sleep(u * SLOW_SAVE_S / 3)
        else:  # between checkpoints: a random moment after step `target` committed
          _wait_for(lambda: target in _committed(ckdir), proc)
          time.sleep(u * SLOW_SAVE_S)
        assert proc.poll() is None, (
          f"kill {n} ({kind}): the run ended before the kill point:\n" + open(log_path).read()[-3000:]
        )
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
      assert proc.returncode == -signal.SIGKILL
      committed, in_flight = _committed(ckdir), _in_flight(ckdir)
      if kind == "write":
        assert target in in_flight and target not in committed, (target, committed, in_flight)
      kills.append(
        dict(
          kind=kind,
          target=target,
          started_from=_start_line(log_path),
          committed=committed[-1] if committed else 0,
          in_flight=sorted(in_flight),
        )
      )

    # The final restart finishes; it must resume from the newest committed step.
    log_path = tmp_path / "final.log"
    with open(log_path, "w") as log:
      final = subprocess.run(
        _cmd(tiny_store, work, slow=True),
        cwd=ROOT,
        env=_env(slow=True),
        stdout=log,
        stderr=subprocess.STDOUT,
        timeout=400,
      )
    out = open(log_path).read()
    assert final.returncode == 0, out[-3000:]
    assert ref.wait(timeout=400) == 0, open(tmp_path / "reference.log").read()[-3000:]
  finally:
    if ref.poll() is None:
      ref.kill()
      ref.wait()
    ref_log.close()

  # Every restart resumed from the checkpoint committed before the previous kill.
  starts = [k["started_from"] for k in kills[1:]] + [_start_line(log_path)]
  for k, start in zip(kills, starts):
    assert start in (None, k["committed"]), (kills, starts)  # None: killed before it logged
  summary = json.loads((work / "run_summary.json").read_text())
  assert summary["start_step"] == kills[-1]["committed"] and summary["step"] == NUM_STEPS
  kinds = [k["kind"] for k in kills]
  assert len(kills) >= 5 and "write" in kinds and "startup" in kinds, kills

  # Same final state as the uninterrupted run: parameters, Adam moments, counters, RMS
  # normalisers, and the data iterator's position.
  a, b = _state(str(ref_work / "checkpoints"), NUM_STEPS), _state(ckdir, NUM_STEPS)
  assert a.keys() == b.keys()
  for key in a:
    np.testing.assert_allclose(b[key], a[key], rtol=0, atol=1e-6, err_msg=key)
  data = [
    json.loads(open(os.path.join(d, str(NUM_STEPS), "data", "process_0-of-1.json")).read())
    for d in (str(ref_work / "checkpoints"), ckdir)
  ]
  assert data[0] == data[1]
  print(f"\nkills: {kills}\ncrash test wall time {time.time() - t_begin:.0f}s")
