"""The analytic memory plan (dreamer4/memory_plan.py): hand-worked parameter and optimiser bytes of
the paper dynamics model, and a small model's plan against XLA:CPU's compiled peak per remat policy."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import pytest

from configs import dynamics, tokenizer
from dreamer4 import memory_plan as mp
from dreamer4.dry_run import ASSUMED_ACTIONS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FSDP8 = {"data": 1, "fsdp": 8, "tensor": 1}


def test_paper_dynamics_parameters_and_optimiser_bytes_by_hand():
  c = dynamics.get_config("paper")
  c.train.batch_size = 8
  p = mp.plan(c, FSDP8, 64, latent_shape=(512, 16), action_spec=ASSUMED_ACTIONS)
  # One layer, D=2048, H=16, G=4, K=128, M=6400:
  #   norms 2*2048 + QK-norms 2*128 = 4,352
  #   wq 2048*16*128 + wk, wv 2 * 2048*4*128 + wo 16*128*2048 = 4,194,304 + 2,097,152 + 4,194,304 = 10,485,760
  #   SwiGLU 3 * 2048*6400 = 39,321,600                                            -> 49,811,712
  # 32 layers = 1,593,974,784; final norm 2,048; outside the stack: latent_in 32*2048 + 2048,
  # registers 4*2048, tau 65*1024, d 7*1024, action base 2048, action table 161*2048 (20 binary keys
  # x 2 rows + 121 mouse cells), readout 2048*32 + 32 = 546,848                 -> 1,594,523,680
  assert mp.layer_params(2048, 16, 4, 128, 6400) == 49_811_712
  assert p["params_total"] == 32 * 49_811_712 + 2048 + 546_848 == 1_594_523_680
  # On 8 devices every weight with an "embed" axis (2048 / 8 = 256) splits 8 ways:
  #   a layer: 49,807,360 / 8 + 4,352 unsplit norms = 6,230,272; x 32 = 199,368,704
  #   + final norm 2,048; latent_in 32*256 + 256, registers 4*256, tau 66,560 and d 7,168
  #   (vocab rows, unsplit), action base 256, table 161*256, readout 256*32 + 32 = 132,896
  assert p["params_per_device"] == 32 * 6_230_272 + 2_048 + 132_896 == 199_503_648
  # float32 params 4 B, Adam mu + nu 8 B, gradients 4 B per parameter on the device; the state's
  # scalars: Adam's 2 counts, step / nonfinite / skipped, the dynamics loss normaliser's (ema, count).
  assert p["fixed"]["params"] == 798_014_592
  assert p["fixed"]["adam"] == 1_596_029_184
  assert p["fixed"]["grads"] == 798_014_592
  assert p["fixed"]["scalars"] == 2 * 4 + 3 * 4 + 8
  assert p["state_bytes"] == 2_394_043_804  # what --dry_run measured on the abstract train state
  # A scanned group (4 layers) in float32 plus its bfloat16 copy: 199,246,848 x 6 B.
  assert p["fixed"]["unit_weights"] == 4 * 49_811_712 * 6


def test_paper_dynamics_activations_by_hand():
  c = dynamics.get_config("paper")
  c.train.batch_size = 8
  p = mp.plan(c, FSDP8, 64, latent_shape=(512, 16), action_spec=ASSUMED_ACTIONS)
  n = 1 * 64 * 262  # tokens on a device: 1 window x 64 frames x (256 spatial + 4 registers + tau/d + action)
  space = p["layer"]["space"]
  assert space["residual_stream"] == 2 * (2 * 4 + 2) * n * 2048  # per RMSNorm: f32 input, f32 x/rms, bf16 output
  assert space["queries"] == (2 * 4 + 2 * 2) * n * 16 * 128
  assert space["keys_values"] == (2 * 4 + 2 * 2) * n * 4 * 128
  assert space["mlp"] == 6 * 2 * n * 6400
  assert space["attention_logits"] == (3 * 4 + 2) * 64 * 16 * 262 * 262  # every logit of every head
  assert p["layer"]["time"]["attention_logits"] == (3 * 4 + 2) * 262 * 16 * 64 * 64
  a = p["activations"]
  assert a["unit"] == 3 * sum(space.values()) + sum(p["layer"]["time"].values())  # one scanned group
  assert a["saved"] == 8 * 4 * n * 2048  # the 8 groups' inputs, float32 on XLA:CPU
  assert a["transient"] == 4 * (2 * n * 6400 + 4 * n * 2048)
  assert p["peak"] == sum(p["fixed"].values()) + a["saved"] + a["unit"] + a["transient"] + a["loss"]
  assert 18.7 < p["peak"] / 2**30 < 18.8  # the module doc's worked example; XLA:CPU compiled 18.00 GiB
  by = p["peak_by_policy"]
  assert by["nothing"] == p["peak"] and by["nothing"] < by["inputs"] < by["attention"] < by["off"]
  assert p["peak_per_layer"] is None  # "nothing" saves no layer inputs
  # Fused accounting (XLA:GPU), the same step on one H200 (batch 1, no FSDP): compiled 30.9 GiB.
  c.train.batch_size = 1
  one = {"data": 1, "fsdp": 1, "tensor": 1}
  fused = mp.plan(c, one, 64, latent_shape=(512, 16), action_spec=ASSUMED_ACTIONS, keeps="fused")
  assert abs(fused["peak"] / 33_213_007_480 - 1) < 0.1


def test_paper_plans_count_the_models_parameters():
  """The config-only parameter tables equal the built models' (abstract builds, no arrays)."""
  from flax import nnx

  from dreamer4 import sharding as shd
  from dreamer4.models.dynamics import Dynamics
  from dreamer4.models.tokenizer import Tokenizer
  from dreamer4.training.state import ModelDef

  t, d = tokenizer.get_config("paper"), dynamics.get_config("paper")
  for c in (t, d):
    c.train.batch_size = 8
  tok = ModelDef.build(lambda r: Tokenizer.from_config(t.model, t.data.frame_shape, nnx.Rngs(r)))
  dyn = ModelDef.build(lambda r: Dynamics.from_config(d.model, 512, 16, ASSUMED_ACTIONS, nnx.Rngs(r)))
  pt = mp.plan(t, FSDP8, 16, frame_shape=t.data.frame_shape)
  pd = mp.plan(d, FSDP8, 64, latent_shape=(512, 16), action_spec=ASSUMED_ACTIONS)
  assert pt["params_total"] == tok.num_params() == 402_634_512
  assert pd["params_total"] == dyn.num_params()
  # Per device: the model's logical specs through the same rule table as the trainer's shardings.
  for mdef, p in ((tok, pt), (dyn, pd)):
    specs = jax.tree.leaves(mdef.logical_specs, is_leaf=lambda v: isinstance(v, shd.P))
    per = sum(mp.per_device(x.shape, tuple(s), FSDP8) for x, s in zip(jax.tree.leaves(mdef.abstract_params), specs))
    assert p["params_per_device"] == per
  from dreamer4.models import lpips

  # VGG16's 13 convolutions (14,714,688) and LPIPS's five 1x1 "lin" layers (64 + 128 + 256 + 512 + 512).
  assert mp.vgg16_params() == 14_714_688 + 1_472 == sum(x.size for x in jax.tree.leaves(lpips.load_lpips_params()))
  assert pt["fixed"]["frozen"] == 4 * mp.vgg16_params()
  assert mp.vgg16_maps_per_pixel() == (270, 30)


# The small model: the paper dynamics layout shrunk (bfloat16, GQA 4:1, SwiGLU 3.1x, scanned
# groups of 2 of 16 layers, 64 spatial + 4 register + 2 tokens per frame, 32 frames), one window
# on one fake CPU device. Compiled in one subprocess (four compiles of about 10 s each on an idle
# core): the memory-optimised CPU scheduler must be set before the backend starts.
SMALL = dict(
  model=dict(
    group=2,
    num_registers=4,
    width=128,
    mlp_dim=400,
    num_heads=4,
    num_kv_heads=1,
    head_dim=32,
    depth=16,
    time_every=2,
    context=0,
    scan_layers=True,
    remat=True,
    dtype="bfloat16",
  ),
  data=dict(window=32, long_window=0, latent_shape=(128, 16)),
  train=dict(batch_size=1),
)
# (name, remat, policy, dtype). Without remat XLA:CPU converts every stacked bfloat16 residual to
# float32 for its float32 matmuls and keeps both copies (1.6x the plan on this model), so "off" is
# checked in float32, where the CPU keeps what the program saves.
CASES = [
  ("nothing", True, "nothing", "bfloat16"),
  ("inputs", True, "inputs", "bfloat16"),
  ("attention", True, "attention", "bfloat16"),
  ("off", False, "nothing", "float32"),
]

_SCRIPT = textwrap.dedent(
  """
  import json, sys
  from dreamer4.dry_run import dry_run, memory_aware_cpu_scheduler
  memory_aware_cpu_scheduler()
  import jax
  jax.config.update("jax_num_cpu_devices", 1)
  from configs import dynamics
  small, cases = json.loads(sys.argv[1]), json.loads(sys.argv[2])
  out = {}
  for name, remat, policy, dtype in cases:
    c = dynamics.get_config("tiny")
    c.mesh.preset = "tpu_fsdp"
    for section, values in small.items():
      for k, v in values.items():
        c[section][k] = tuple(v) if isinstance(v, list) else v
    c.model.remat, c.model.remat_policy, c.model.dtype = remat, policy, dtype
    s = dry_run(c)["steps"]["short"]
    out[name] = dict(compiled=s["memory_per_device"]["peak"], analytic=s["analytic"]["peak"],
                     per_layer=s["analytic"]["peak_per_layer"], compile_s=s["compile_s"])
  print(json.dumps(out))
  """
)


@pytest.fixture(scope="module")
def small_model_peaks():
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  env.pop("XLA_FLAGS", None)
  env.pop("JAX_NUM_CPU_DEVICES", None)
  proc = subprocess.run(
    [sys.executable, "-c", _SCRIPT, json.dumps(SMALL), json.dumps(CASES)],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=900,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", ["nothing", "inputs", "attention", "off"])
def test_small_model_plan_is_within_25_percent_of_the_compiled_peak(small_model_peaks, name):
  r = small_model_peaks[name]
  assert 0.75 <= r["analytic"] / r["compiled"] <= 1.25, r


def test_small_model_policies_order_as_compiled(small_model_peaks):
  """Saving more costs more memory, in the plan and in the compiled step: nothing < inputs <
  attention (bfloat16, one model); no remat costs the most (the plan)."""
  order = ["nothing", "inputs", "attention"]
  for key in ("analytic", "compiled"):
    peaks = [small_model_peaks[n][key] for n in order]
    assert peaks[0] < peaks[1] < peaks[2], (key, peaks)
  c = dynamics.get_config("tiny")
  for section, values in SMALL.items():
    for k, v in values.items():
      c[section][k] = tuple(v) if isinstance(v, list) else v
  by = mp.plan(c, {"data": 1, "fsdp": 1, "tensor": 1}, 32, latent_shape=(128, 16), action_spec=ASSUMED_ACTIONS)[
    "peak_by_policy"
  ]
  assert by["nothing"] < by["inputs"] < by["attention"] < by["off"]
  # With every layer's input saved, one layer at a time would be the floor.
  for n in ("inputs", "attention"):
    assert small_model_peaks[n]["per_layer"] < small_model_peaks[n]["analytic"]
