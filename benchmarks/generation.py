r"""Real-time generation: per-frame latency, KV-cached vs uncached, against context.

Run from the repository root:

  PYTHONPATH=. .venv/bin/python -m benchmarks.generation [--contexts=8,16,32,64,128] \
      [--batches=1,8] [--k=2] [--frames=3] [--out=results.jsonl]

Model: the toy dynamics config (configs/dynamics.py:toy) on toy tokenizer latents
(16 x 16), random weights (speed only), built with model.context = max(--contexts)
so every window is within the model's own time mask.

Per (context c, batch B):
  cached    `inference.world.World` with window c, primed with c - 1 frames so the
            cache is full; each timed call is one `World.step` (k shortcut passes of
            one frame over the cache + one context re-encode pass).
  uncached  the steady state of `inference.sampler.generate`: k model passes over
            the whole window of c frames (the new frame last), jitted once.
Each mode is compiled and run `--warmup` times untimed, then `--frames` frames are
timed one by one (block_until_ready); frame_s is their median. JSON lines: one per
measurement, then one "summary" line per batch size with the two targets:
cached latency growth from the smallest to the largest context (target <= 1.5x)
and the cached speedup over uncached at context 64 (target >= 5x).
"""

from __future__ import annotations

import json
import statistics
import time

import jax
import jax.numpy as jnp
from absl import app, flags
from flax import nnx

from configs import dynamics as dynamics_config
from configs import tokenizer as tokenizer_config
from data_pipelines.envs.base import Action, ActionComponent, ActionSpec
from dreamer4.aot import AotJit
from dreamer4.inference.world import World, no_action
from dreamer4.models.dynamics import Dynamics, log2_exact, make_sampling_fn

FLAGS = flags.FLAGS
flags.DEFINE_list("contexts", ["8", "16", "32", "64", "128"], "Context lengths (window frames).")
flags.DEFINE_list("batches", ["1", "8"], "Batch sizes (environments stepped at once).")
flags.DEFINE_list("modes", ["cached", "uncached"], "Which paths to time.")
flags.DEFINE_integer("k", 2, "Shortcut steps per frame.")
flags.DEFINE_integer("frames", 3, "Timed frames per measurement.")
flags.DEFINE_integer("warmup", 1, "Untimed frames (the first compiles).")
flags.DEFINE_string("variant", "toy", "configs/dynamics.py variant.")
flags.DEFINE_string("out", "", "Also append the JSON lines to this file.")


def build_model(variant: str, context: int) -> Dynamics:
  model_cfg = dynamics_config.model_config(variant)
  model_cfg.context = context
  tok_cfg = tokenizer_config.model_config(variant)
  spec = ActionSpec((ActionComponent("move", "discrete", 5),))
  with nnx.use_eager_sharding(False):
    return Dynamics.from_config(model_cfg, tok_cfg.num_latents, tok_cfg.latent_dim, spec, nnx.Rngs(0))


def time_calls(fn, warmup: int, frames: int) -> tuple[list[float], float]:
  """Runs fn() warmup + frames times; returns per-call seconds and the first call's."""
  first = None
  for i in range(warmup):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    if i == 0:
      first = time.perf_counter() - t0
  times = []
  for _ in range(frames):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return times, first


def bench_cached(model, c: int, B: int, k: int, warmup: int, frames: int) -> dict:
  world = World(model, k=k, context_noise=0.1, window=c)
  N, L = model.num_latents, model.latent_dim
  ctx = jax.random.normal(jax.random.key(0), (B, c - 1, N, L))
  state = world.reset(ctx, no_action(model, B, c - 1), jax.random.key(1))
  action = Action.labelled_from(jnp.zeros((B, 1), jnp.int32))
  box = {"state": state, "i": 0}

  def one():
    # The state advances every frame, so the cache stays full and keeps rolling.
    out, box["state"] = world.step(box["state"], action, jax.random.key(box["i"]))
    box["i"] += 1
    return out["z_BNL"]

  times, first = time_calls(one, warmup, frames)
  return {"frame_s": statistics.median(times), "first_call_s": first, "compiles": world.step_compiles()}


def bench_uncached(model, c: int, B: int, k: int, warmup: int, frames: int) -> dict:
  apply_fn = make_sampling_fn(model)
  N, L = model.num_latents, model.latent_dim
  log2_k, grid = log2_exact(k), model.k_max // k
  ctx_idx = int(round(0.9 * model.k_max))
  d_min_idx = log2_exact(model.k_max)
  is_last_W = jnp.arange(c) == c - 1
  d_idx_BW = jnp.broadcast_to(jnp.where(is_last_W, log2_k, d_min_idx), (B, c)).astype(jnp.int32)

  @AotJit
  def frame(hist_BWNL, actions, rng):
    # generate()'s steady state: every shortcut step re-runs the whole window.
    def body(j, z_BNL):
      z_BWNL = hist_BWNL.at[:, -1].set(z_BNL)
      tau_idx_BW = jnp.broadcast_to(jnp.where(is_last_W, j * grid, ctx_idx), (B, c))
      z1_BNL = apply_fn(z_BWNL, tau_idx_BW.astype(jnp.int32), d_idx_BW, actions)[:, -1]
      a = 1.0 / jnp.asarray(k - j, jnp.float32)
      return (1.0 - a) * z_BNL + a * z1_BNL

    return jax.lax.fori_loop(0, k, body, jax.random.normal(rng, (B, N, L)))

  hist = jax.random.normal(jax.random.key(0), (B, c, N, L))
  actions = Action.labelled_from(jnp.zeros((B, c, 1), jnp.int32))
  box = {"i": 0}

  def one():
    box["i"] += 1
    return frame(hist, actions, jax.random.key(box["i"]))

  times, first = time_calls(one, warmup, frames)
  return {"frame_s": statistics.median(times), "first_call_s": first, "compiles": frame.compiles}


def main(argv):
  del argv
  contexts = sorted(int(c) for c in FLAGS.contexts)
  batches = [int(b) for b in FLAGS.batches]
  model = build_model(FLAGS.variant, max(contexts))
  out_file = open(FLAGS.out, "a") if FLAGS.out else None

  def emit(rec):
    line = json.dumps(rec)
    print(line, flush=True)
    if out_file:
      out_file.write(line + "\n")
      out_file.flush()

  results = {}
  benches = {"cached": bench_cached, "uncached": bench_uncached}
  for B in batches:
    for c in contexts:
      for mode in FLAGS.modes:
        r = benches[mode](model, c, B, FLAGS.k, FLAGS.warmup, FLAGS.frames)
        results[(mode, B, c)] = r["frame_s"]
        emit(
          {
            "bench": "generation",
            "mode": mode,
            "variant": FLAGS.variant,
            "context": c,
            "batch": B,
            "k": FLAGS.k,
            "frame_s": round(r["frame_s"], 6),
            "frames_per_s": round(B / r["frame_s"], 2),
            "first_call_s": round(r["first_call_s"], 3),
            "compiles": r["compiles"],
            "device": jax.devices()[0].device_kind,
          }
        )
  for B in batches:
    summary = {"bench": "generation", "summary": True, "batch": B, "k": FLAGS.k}
    lo, hi = contexts[0], contexts[-1]
    if ("cached", B, lo) in results and ("cached", B, hi) in results:
      growth = results[("cached", B, hi)] / results[("cached", B, lo)]
      summary.update({f"cached_growth_{lo}_to_{hi}": round(growth, 3), "growth_target_met": growth <= 1.5})
    ref = 64 if 64 in contexts else hi
    if ("cached", B, ref) in results and ("uncached", B, ref) in results:
      speedup = results[("uncached", B, ref)] / results[("cached", B, ref)]
      summary.update({f"speedup_at_{ref}": round(speedup, 2), "speedup_target_met": speedup >= 5})
    emit(summary)
  if out_file:
    out_file.close()


if __name__ == "__main__":
  app.run(main)
