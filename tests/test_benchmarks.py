"""The train-step benchmark's code path at a tiny, matmul-dominated size."""

import math

import jax
import ml_collections

from benchmarks import flops as fl
from benchmarks import train_step as ts
from configs import tokenizer
from dreamer4 import sharding as shd


def _tiny_matmul_config(data_path):
  c = tokenizer.get_config("tiny")
  c.data.path = data_path
  m = c.model  # 16x16 frames, patch 4: 16 patches + 16 latents per frame
  m.num_latents = 16
  m.width = 128
  m.num_heads = 2
  m.num_kv_heads = 2
  m.head_dim = 64
  m.mlp_dim = 512
  c.loss.lpips_weight = 0.0
  c.train.batch_size = 8
  return c


def _one_device_mesh():
  cfg = ml_collections.ConfigDict({"preset": "single", "shape": (1, 1, 1)})
  return shd.make_mesh(cfg, jax.devices()[:1])


def test_train_step_benchmark_numbers(tiny_store):
  config = _tiny_matmul_config(tiny_store)
  peak = ts.matmul_peak([256], repeats=2)[0]["gflops"]
  rec = ts.run_train_step(config, tiny_store, mesh=_one_device_mesh(), steps=2, warmup=1, peak_gflops=peak,
                          size="test")
  assert rec["compiles"] == 1
  assert rec["devices"] == 1 and not rec["lpips"]
  assert rec["steps"] == 2 and rec["step_s"] > 0 and rec["frames_per_s"] > 0
  assert math.isfinite(rec["loss"])
  assert rec["flops_xla"] > 0 and rec["flops_analytic"] > 0
  assert rec["flops_analytic_parts"]["lpips"] == 0
  assert 0.5 < rec["analytic_over_xla"] < 2.0, rec["analytic_over_xla"]
  assert 0.0 < rec["mfu"] < 1.5, rec["mfu"]
  assert 0.0 < rec["hfu"] < 1.5, rec["hfu"]


def test_vgg16_flops_match_the_textbook_count():
  # VGG16's 13 convolutions at 224x224 are about 15.35 GMACs (without the classifier).
  convs = fl.vgg16_forward_flops(224, 224) - sum(2 * s * s * c for s, c in
                                                ((224, 64), (112, 128), (56, 256), (28, 512), (14, 512)))
  assert abs(convs / 2 / 15.35e9 - 1) < 0.01


def test_dynamics_train_step_benchmark_counts_the_bootstrap_passes():
  from configs import dynamics
  c = dynamics.get_config("tiny")
  c.loss.bootstrap_fraction = 0.5  # 4 of 8 rows
  rec = ts.run_dynamics_step(c, latent_shape=(4, 8), mesh=_one_device_mesh(), steps=2, warmup=1,
                             peak_gflops=ts.matmul_peak([256], repeats=2)[0]["gflops"], size="test")
  assert rec["compiles"] == 1 and rec["steps"] == 2 and rec["frames_per_s"] > 0
  assert math.isfinite(rec["loss"])
  parts = rec["flops_analytic_parts"]
  # The two half-step passes run forward only (1 pass each) on half the rows; the gradient
  # pass costs 3 forward passes on all rows: bootstrap / gradient = 2 * 0.5 / 3.
  grad = parts["transformer"] + parts["embed"] + parts["attention"]
  assert math.isclose(parts["bootstrap"] / grad, 2 * 0.5 / 3, rel_tol=1e-9)
  assert 0.5 < rec["analytic_over_xla"] < 2.0, rec["analytic_over_xla"]
  assert 0.0 < rec["mfu"] < 1.5
