"""--dry_run: the train step compiled on 8 fake devices with abstract inputs; numbers consistent; nothing written."""

import json
import os
import subprocess
import sys

import jax
import pytest
from flax import nnx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(args, tmp_path):
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  env.pop("XLA_FLAGS", None)
  env.pop("JAX_NUM_CPU_DEVICES", None)
  return subprocess.run(
    [sys.executable, "-m", "dreamer4.main", "--dry_run", *args, f"--workdir={tmp_path / 'work'}"],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )


def _report(proc):
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


def _count(params) -> int:
  return sum(int(x.size) for x in jax.tree.leaves(params))


def _check_numbers(r, devices=8):
  assert r["devices"] == devices and r["mesh"]["fsdp"] == devices
  total, per = r["params_total"], r["params_per_device"]
  # FSDP splits every weight whose width divides the axis; norms and small tables stay whole.
  assert total / devices <= per <= 1.25 * total / devices, (total, per)
  assert r["state_bytes_per_device"] >= 3 * 4 * per  # params + two Adam moments, float32
  for s in r["steps"].values():
    m = s["memory_per_device"]
    assert m["alias"] == r["state_bytes_per_device"]  # the donated state is updated in place
    assert m["argument"] >= r["state_bytes_per_device"] and m["temp"] > 0
    assert m["peak"] == m["argument"] + m["output"] - m["alias"] + m["temp"]
    assert s["flops_per_device"] > 0 and s["flops_total"] == pytest.approx(devices * s["flops_per_device"])


def test_tokenizer_dry_run(tiny_store, tmp_path):
  proc = _run(
    [
      "--config=configs/tokenizer.py:tiny",
      f"--config.data.path={tiny_store}",
      "--cpu_devices=8",
      "--config.mesh.preset=gpu8",
      f"--dry_run_output={tmp_path / 'report.json'}",
    ],
    tmp_path,
  )
  r = _report(proc)
  assert "parameters:" in proc.stdout and "FLOPs per step" in proc.stdout
  assert json.loads((tmp_path / "report.json").read_text()) == r
  assert not (tmp_path / "work").exists()
  _check_numbers(r)
  assert list(r["steps"]) == ["short"] and r["frame_shape"] == [16, 16, 3]

  from configs import tokenizer
  from data_pipelines.episodes import EpisodeStore
  from dreamer4.phases.tokenizer import make_phase

  cfg = tokenizer.get_config("tiny")
  phase = make_phase(cfg, EpisodeStore.open(tiny_store))
  assert r["params_total"] == _count(phase.model_def.init_params(jax.random.key(0)))


def test_dynamics_dry_run_without_tokenizer(tmp_path):
  proc = _run(
    [
      "--config=configs/dynamics.py:tiny",
      "--config.data.latent_shape=(4,8)",
      "--cpu_devices=8",
      "--config.mesh.preset=tpu_fsdp",
    ],
    tmp_path,
  )
  r = _report(proc)
  assert not (tmp_path / "work").exists()
  _check_numbers(r)
  assert r["latent_shape"] == [4, 8] and list(r["steps"]) == ["short", "long"]
  short, long = r["steps"]["short"], r["steps"]["long"]
  assert (short["window"], long["window"]) == (4, 6)
  assert long["flops_per_device"] > short["flops_per_device"]

  from configs import dynamics
  from dreamer4.dry_run import ASSUMED_ACTIONS
  from dreamer4.models.dynamics import Dynamics

  with nnx.use_eager_sharding(False):
    model = Dynamics.from_config(dynamics.get_config("tiny").model, 4, 8, ASSUMED_ACTIONS, nnx.Rngs(0))
  assert r["params_total"] == _count(nnx.state(model, nnx.Param))


@pytest.mark.parametrize(
  "extra,expect",
  [
    (
      [
        "--config=configs/tokenizer.py:tiny",
        "--config.data.frame_shape=(16,16,3)",
        "--config.mesh.shape=(3,1,1)",
        "--cpu_devices=8",
      ],
      "--config.mesh.shape=(3, 1, 1) needs a multiple of 3 devices but 8 are present",
    ),
    (["--config=configs/tokenizer.py:tiny", "--cpu_devices=8"], "needs the frame shape"),
    (["--config=configs/dynamics.py:tiny", "--cpu_devices=8"], "needs the latent shape"),
    (["--config=configs/tokenizer.py:tiny", "--heartbeat_timeout=0"], "--heartbeat_timeout=0 must be at least 1"),
  ],
)
def test_dry_run_bad_input_is_one_line(tmp_path, extra, expect):
  proc = _run(extra, tmp_path)
  errors = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert len(errors) == 1 and expect in errors[0], proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr
  assert not (tmp_path / "work").exists()


def test_paper_configs_have_the_paper_sizes():
  """Abstract builds only (no parameters): about 400M and 1.6B, the paper's shapes, bf16 + remat + FSDP."""
  from configs import dynamics, tokenizer
  from dreamer4.dry_run import ASSUMED_ACTIONS
  from dreamer4.models.dynamics import Dynamics
  from dreamer4.models.tokenizer import Tokenizer
  from dreamer4.training.state import ModelDef

  t, d = tokenizer.get_config("paper"), dynamics.get_config("paper")
  tok = ModelDef.build(lambda r: Tokenizer.from_config(t.model, t.data.frame_shape, nnx.Rngs(r)))
  N, L = d.data.latent_shape
  dyn = ModelDef.build(lambda r: Dynamics.from_config(d.model, N, L, ASSUMED_ACTIONS, nnx.Rngs(r)))
  assert 0.38e9 < tok.num_params() < 0.42e9 and 1.55e9 < dyn.num_params() < 1.65e9
  assert t.data.frame_shape == (384, 640, 3) and t.model.patch_size == 16 and t.data.window == 16
  assert (t.model.num_latents, t.model.latent_dim) == (N, L) == (512, 16)
  assert N // d.model.group == 256 and d.model.context == 192 and d.model.k_max == 64
  assert (d.data.window, d.data.long_window) == (64, 256)
  for c in (t, d):
    assert c.model.dtype == "bfloat16" and c.model.remat and c.mesh.preset == "tpu_fsdp"


def test_craftax_large_configs_have_their_sizes():
  """Abstract builds only: the one-GPU Craftax models (the full dry-run compiles take minutes on CPU;
  `--dry_run --config=configs/<phase>.py:craftax_large --cpu_devices=8` shows their memory)."""
  from configs import dynamics, tokenizer
  from dreamer4.dry_run import ASSUMED_ACTIONS
  from dreamer4.models.dynamics import Dynamics
  from dreamer4.models.tokenizer import Tokenizer
  from dreamer4.training.state import ModelDef

  t, d = tokenizer.get_config("craftax_large"), dynamics.get_config("craftax_large")
  tok = ModelDef.build(lambda r: Tokenizer.from_config(t.model, t.data.frame_shape, nnx.Rngs(r)))
  N, L = d.data.latent_shape
  dyn = ModelDef.build(lambda r: Dynamics.from_config(d.model, N, L, ASSUMED_ACTIONS, nnx.Rngs(r)))
  assert 60e6 < tok.num_params() < 75e6 and 125e6 < dyn.num_params() < 150e6
  assert (t.model.num_latents, t.model.latent_dim) == (N, L) == (64, 16)
  assert t.model.context == t.data.window and d.model.context < d.data.long_window
  for c in (t, d):
    assert c.model.dtype == "bfloat16" and c.model.remat and c.mesh.preset == "single" and c.mesh.num_devices == 1
