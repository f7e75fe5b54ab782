r"""Compile time and XLA temp memory of a dynamics gradient step, scanned vs unscanned layers.

  python -m benchmarks.scan_layers --depths=4,8,16 --remat=0,1

For each (depth, scan_layers, remat) it jits value_and_grad of an MSE loss of a small
dynamics model (the toy variant's widths, time_every 2, B=4, T=16) on the default
backend, and prints one line: lower and compile seconds, the StableHLO line count,
`compiled.memory_analysis()` temp / argument bytes and, with --steps, the median seconds
of one executed step. Timings on a shared machine are noisy.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from data_pipelines.envs.base import Action, ActionComponent, ActionSpec
from dreamer4.models.dynamics import Dynamics

SPEC = ActionSpec((ActionComponent("move", "discrete", 5),))
N, L = 16, 16  # the toy tokenizer's latents


def model_cfg(depth: int, scan: bool, remat: bool, policy: str) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(
    dict(
      group=2,
      num_registers=2,
      k_max=64,
      width=128,
      depth=depth,
      num_heads=4,
      num_kv_heads=2,
      head_dim=32,
      mlp_dim=512,
      time_every=2,
      softcap=50.0,
      context=16,
      dtype="float32",
      remat=remat,
      remat_policy=policy,
      scan_layers=scan,
      spatial_pos=False,
      attention="dense",
    )
  )


def measure(
  depth: int, scan: bool, remat: bool, policy: str = "nothing", B: int = 4, T: int = 16, steps: int = 0
) -> dict:
  with nnx.use_eager_sharding(False):
    model = nnx.eval_shape(lambda: Dynamics.from_config(model_cfg(depth, scan, remat, policy), N, L, SPEC, nnx.Rngs(0)))
  graphdef, params = nnx.split(model, nnx.Param)
  z = jax.ShapeDtypeStruct((B, T, N, L), jnp.float32)
  idx = jax.ShapeDtypeStruct((B, T), jnp.int32)
  act = Action(
    jax.ShapeDtypeStruct((B, T, 1), jnp.int32),
    jax.ShapeDtypeStruct((B, T, 0), jnp.float32),
    jax.ShapeDtypeStruct((B, T), jnp.bool_),
  )

  def loss(params, z, tau, d, act):
    out = nnx.merge(graphdef, params)(z, tau, d, act)
    return jnp.mean(jnp.square(out["z1_hat_BTNL"] - z))

  t0 = time.perf_counter()
  lowered = jax.jit(jax.value_and_grad(loss)).lower(params, z, idx, idx, act)
  t1 = time.perf_counter()
  compiled = lowered.compile()
  t2 = time.perf_counter()
  mem = compiled.memory_analysis()
  step_s = None
  if steps:
    concrete = [jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), x) for x in (params, z, idx, idx, act)]
    times = []
    for _ in range(steps + 1):  # the first run is a warm-up
      t = time.perf_counter()
      jax.block_until_ready(compiled(*concrete))
      times.append(time.perf_counter() - t)
    step_s = round(sorted(times[1:])[len(times[1:]) // 2], 4)
  return dict(
    depth=depth,
    scan_layers=scan,
    remat=remat,
    remat_policy=policy if remat else None,
    lower_s=round(t1 - t0, 2),
    compile_s=round(t2 - t1, 2),
    hlo_lines=len(lowered.as_text().splitlines()),
    temp_MiB=round(mem.temp_size_in_bytes / 2**20, 2),
    argument_MiB=round(mem.argument_size_in_bytes / 2**20, 2),
    step_s=step_s,
  )


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--depths", default="4,8,16")
  p.add_argument("--remat", default="0,1", help="remat settings to measure (0, 1)")
  p.add_argument("--policies", default="", help="also measure these remat policies, scanned, at the last depth")
  p.add_argument("--steps", type=int, default=0, help="also time this many executed steps (median)")
  args = p.parse_args()
  depths = [int(d) for d in args.depths.split(",")]
  for remat in [bool(int(r)) for r in args.remat.split(",")]:
    for depth in depths:
      for scan in (False, True):
        print(json.dumps(measure(depth, scan, remat, steps=args.steps)), flush=True)
  for policy in filter(None, args.policies.split(",")):
    print(json.dumps(measure(depths[-1], True, True, policy, steps=args.steps)), flush=True)


if __name__ == "__main__":
  main()
