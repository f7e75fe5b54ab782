r"""Train-step throughput and MFU against a matmul peak measured in the same process.

  python -m benchmarks.train_step [--phase=tokenizer|dynamics] [--sizes=...] [--steps=3] \
      [--devices=1] [--out=results.jsonl]

Prints one JSON line per measurement (and appends them to --out when given):

  {"bench": "matmul_peak", ...}   jitted float32 a @ b, best of a few runs, GFLOP/s
  {"bench": "train_step", ...}    one line per size: frames/s, step and compile time,
                                  model FLOPs (analytic and XLA's), MFU and HFU

The step is the trainer's own (`dreamer4.training.state.TrainStep` of the phase's loss:
committed state shardings, donated state), compiled once ahead of time (`compiles` counts
the executables it built). It is fed uint8 batches that the real loader reads from a
toy-world EpisodeStore collected into a temporary directory; the batches are read and
placed on the devices before the clock starts, so the timing is the step alone (the
loader has its own benchmark). `step_s` is the median of the timed steps.

Model FLOPs per step are counted twice:
  flops_analytic  matmuls and convolutions only (benchmarks/flops.py: 6 * weights *
                  tokens for the transformer blocks, attention products, LPIPS VGG).
  flops_xla       XLA's count for the compiled step (`cost_analysis()["flops"]`, times
                  the devices), which also counts elementwise work (norms, softmax,
                  Adam) and skips the zero padding of convolutions.
MFU = flops_analytic / step_s / peak (the usual definition); HFU ("hardware FLOPs
utilisation") = flops_xla / step_s / peak. The peak is the best float32 a @ b throughput
at the largest --peak_sizes (2048 by default), measured at the start and again right
before each size's timed steps; the larger of the two counts. On a shared machine both
the peak and the step time move with the load, so MFU is noisy (even > 1 is possible).

Sizes:
  small   configs/tokenizer.py:toy as it is (64x64 frames, width 128, 2.2M parameters,
          LPIPS on 4 of the 16 frames per step, which is most of the FLOPs).
  matmul  a wider tokenizer where the block matmuls dominate: LPIPS off, width 768,
          6 heads of 128, SwiGLU 3072, 4+4 layers (76M parameters), 64 patches + 64
          latents per frame, 8 x 2 frames per step: every block matmul has 2048 rows.

--phase=dynamics times the shortcut-forcing dynamics step instead (sizes toy, flow_only,
all_bootstrap: the toy config with its own, no, and every row's bootstrap targets; see
`run_dynamics_step`).

--devices=N runs on N fake CPU devices over a ("data") mesh. That checks the sharded path
only; the fake devices share the same cores, so its timings mean nothing.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

from absl import app, flags

from benchmarks.peak import matmul_peak

PHASES = ("tokenizer", "dynamics")
SIZES = ("small", "matmul")
# Dynamics sizes: the toy model with its own bootstrap share, then with none and with every
# row bootstrapped, so the cost of the two extra half-step passes shows up as a ratio.
DYNAMICS_SIZES = ("toy", "flow_only", "all_bootstrap")

_PHASE = flags.DEFINE_enum("phase", "tokenizer", PHASES, "Which phase's train step to measure.")
_SIZES = flags.DEFINE_list(
  "sizes",
  None,
  f"Benchmark sizes: tokenizer {', '.join(SIZES)} (default all); dynamics {', '.join(DYNAMICS_SIZES)} (default all).",
)
_STEPS = flags.DEFINE_integer("steps", 3, "Timed steps per size (after one warm-up step).")
_WARMUP = flags.DEFINE_integer("warmup", 1, "Untimed steps after the compile.")
_DEVICES = flags.DEFINE_integer("devices", 1, "Fake CPU devices for the data mesh (correctness only).")
_PEAK_SIZES = flags.DEFINE_list(
  "peak_sizes", ["1024", "2048"], "Matrix sizes of the matmul peak; the largest one is the MFU reference."
)
_DATA = flags.DEFINE_string(
  "data", "", "An existing toy EpisodeStore with 64x64 frames; default: collect one into a temporary directory."
)
_OUT = flags.DEFINE_string("out", "", "Append the JSON lines to this file as well.")


# ------------------------------------------------------------------------------------------ peak


# ------------------------------------------------------------------------------------------ sizes


def size_config(size: str):
  """The tokenizer config of one benchmark size (see the module docstring)."""
  from configs import tokenizer

  if size == "small":
    return tokenizer.get_config("toy")
  if size == "matmul":
    c = tokenizer.get_config("toy")
    m = c.model
    m.patch_size = 8  # 64x64 frames -> 64 patches
    m.num_latents = 64  # + 64 latents = 128 tokens per frame
    m.width = 768
    m.num_heads = 6
    m.num_kv_heads = 6
    m.head_dim = 128  # few wide heads: bigger attention matmuls than 12 x 64
    m.mlp_dim = 3072  # 4x width (SwiGLU)
    m.enc_depth = 4
    m.dec_depth = 4
    c.loss.lpips_weight = 0.0
    c.train.batch_size = 8  # x window 2 = 16 frames: 2048 rows in every block matmul
    return c
  raise ValueError(f"--sizes: unknown size {size!r}; choose from {', '.join(SIZES)}")


# ------------------------------------------------------------------------------------------ step


def _read_batches(data_path: str, window: int, batch_size: int, count: int) -> list[dict]:
  """`count` training batches from the real loader, read up front so the timing excludes I/O."""
  from data_pipelines import loader
  from data_pipelines.episodes import EpisodeStore

  store = EpisodeStore.open(data_path)
  train_ids, _ = store.split(0.1)
  it = loader.train_iterator(
    data_path, window=window, batch_size=batch_size, seed=0, episode_ids=train_ids, num_threads=1, prefetch=1
  )
  batches = [{"frames": next(it)["frames"]} for _ in range(count)]
  del it
  return batches


def _compile_and_time(
  p_train, state, device_batches, key, frozen, *, warmup: int, peak_fn: Callable[[], float] | None = None
) -> dict[str, Any]:
  """Compiles the TrainStep `p_train` for the batches once, then times it.

  Every call reuses that executable (`compiles` stays 1). The first `warmup` batches run
  untimed, the rest are timed one by one (`block_until_ready`).

  Returns:
    compile_s; cost (XLA's flops / bytes accessed / transcendentals, scaled from one
    device's SPMD program to the whole mesh: replicated work counts once per device, as
    it runs); warmup_s (mean untimed step); times; the last step's metrics; peak (from
    `peak_fn`, measured right before the timed steps, or None).
  """
  import jax

  t0 = time.perf_counter()
  compiled = p_train.compile(state, device_batches[0], key, frozen)
  compile_s = time.perf_counter() - t0
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  cost = {
    k: float(v) * p_train.mesh.size
    for k, v in dict(cost or {}).items()
    if k in ("flops", "bytes accessed", "transcendentals")
  }
  t0 = time.perf_counter()
  for b in device_batches[:warmup]:
    state, metrics = p_train(state, b, key, frozen)
  jax.block_until_ready(state)
  warmup_s = (time.perf_counter() - t0) / warmup
  peak = peak_fn() if peak_fn is not None else None
  times = []
  for b in device_batches[warmup:]:
    t0 = time.perf_counter()
    state, metrics = p_train(state, b, key, frozen)
    jax.block_until_ready(state)
    times.append(time.perf_counter() - t0)
  return dict(compile_s=compile_s, cost=cost, warmup_s=warmup_s, times=times, metrics=metrics, peak=peak)


def run_train_step(
  config,
  data_path: str,
  *,
  mesh=None,
  steps: int = 3,
  warmup: int = 1,
  peak_gflops: float | None = None,
  peak_fn: Callable[[], float] | None = None,
  size: str = "custom",
) -> dict[str, Any]:
  """Builds the tokenizer train step as the trainer does and times it.

  Args:
    config: a configs/tokenizer.py config; `config.loss.lpips_weight == 0` drops the
      LPIPS term (and its VGG pass) from the loss.
    data_path: EpisodeStore whose frames match the config.
    mesh: the device mesh; default `make_mesh(config.mesh)` over all devices.
    steps: timed steps (the median counts).
    warmup: untimed steps after the compile (at least 1).
    peak_gflops: measured matmul peak (GFLOP/s) for MFU/HFU; None (and no
      `peak_fn`) leaves them out.
    peak_fn: measures the peak again right before the timed steps; the larger of
      that and `peak_gflops` is used (on a shared machine the peak drifts).
    size: name recorded in the result.

  Returns:
    A JSON-ready dict (see the module docstring).
  """
  import jax
  import numpy as np

  from benchmarks import flops as fl
  from data_pipelines import loader
  from data_pipelines.episodes import EpisodeStore
  from dreamer4 import sharding as shd
  from dreamer4.phases.tokenizer import make_phase
  from dreamer4.training import state as st

  if steps < 1 or warmup < 1:
    raise ValueError(f"need --steps >= 1 and --warmup >= 1, got {steps} and {warmup}")
  t_start = time.perf_counter()
  store = EpisodeStore.open(data_path)
  frame_shape = tuple(int(x) for x in store.frame_shape)
  phase = make_phase(config, store)
  use_lpips = float(config.loss.lpips_weight) > 0
  if mesh is None:
    mesh = shd.make_mesh(config.mesh)
  B, T = int(config.train.batch_size), int(config.data.window)
  shd.check_batch_divides(B, mesh)
  mdef = phase.model_def
  p_train = st.TrainStep(mdef, phase.loss_fn, phase.init_aux, config.optim, 1000, mesh)
  batches = _read_batches(data_path, T, B, warmup + steps)

  key = jax.random.key(0)
  with jax.set_mesh(mesh):
    state = p_train.init(key)
    frozen = jax.device_put(phase.frozen(), p_train.replicated)
    device_batches = [loader.global_batch(b, mesh) for b in batches]
    jax.block_until_ready((state, frozen, device_batches))
    setup_s = time.perf_counter() - t_start
    timed = _compile_and_time(p_train, state, device_batches, key, frozen, warmup=warmup, peak_fn=peak_fn)
  compile_s, cost, warmup_s, times, metrics = (timed[k] for k in ("compile_s", "cost", "warmup_s", "times", "metrics"))
  xla_flops = cost.get("flops", 0.0)
  if timed["peak"] is not None:
    peak_gflops = max(peak_gflops or 0.0, timed["peak"])  # measured right next to the timed steps
  loss = float(np.asarray(jax.device_get(metrics["loss"])))

  step_s = statistics.median(times)
  analytic = fl.tokenizer_train_flops(
    config.model, frame_shape, B, T, lpips_frames=int(config.loss.lpips_frames), lpips=use_lpips
  )
  patches = (frame_shape[0] // int(config.model.patch_size)) * (frame_shape[1] // int(config.model.patch_size))
  result = dict(
    bench="train_step",
    phase=phase.name,
    size=size,
    devices=int(mesh.size),
    mesh={k: int(v) for k, v in mesh.shape.items()},
    frame_shape=list(frame_shape),
    batch=B,
    window=T,
    width=int(config.model.width),
    heads=int(config.model.num_heads),
    head_dim=int(config.model.head_dim),
    mlp_dim=int(config.model.mlp_dim),
    depth=int(config.model.enc_depth) + int(config.model.dec_depth),
    lpips=use_lpips,
    params=int(mdef.num_params()),
    tokens_per_step=B * T * (patches + int(config.model.num_latents)),
    compiles=p_train.compiles,
    setup_s=setup_s,
    compile_s=compile_s,
    warmup_step_s=warmup_s,
    steps=len(times),
    step_s=step_s,
    step_s_min=min(times),
    frames_per_s=B * T / step_s,
    flops_analytic=int(analytic["total"]),
    flops_analytic_parts={k: int(v) for k, v in analytic.items() if k != "total"},
    flops_xla=xla_flops,
    bytes_accessed_xla=cost.get("bytes accessed", 0.0),
    transcendentals_xla=cost.get("transcendentals", 0.0),
    analytic_over_xla=analytic["total"] / xla_flops if xla_flops else None,
    achieved_gflops=analytic["total"] / step_s / 1e9,
    achieved_gflops_xla=xla_flops / step_s / 1e9,
    loss=loss,
  )
  if peak_gflops:
    result["peak_gflops"] = peak_gflops
    result["mfu"] = result["achieved_gflops"] / peak_gflops
    result["hfu"] = result["achieved_gflops_xla"] / peak_gflops
  return result


# ------------------------------------------------------------------------------------------ dynamics


def dynamics_size_config(size: str):
  """The dynamics config of one benchmark size: configs/dynamics.py:toy, bootstrap share varied."""
  from configs import dynamics

  c = dynamics.get_config("toy")
  if size == "flow_only":
    c.loss.bootstrap_fraction = 0.0
  elif size == "all_bootstrap":
    c.loss.bootstrap_fraction = 1.0
  elif size != "toy":
    raise ValueError(f"--sizes: unknown dynamics size {size!r}; choose from {', '.join(DYNAMICS_SIZES)}")
  return c


def run_dynamics_step(
  config,
  *,
  latent_shape=(16, 16),
  mesh=None,
  steps: int = 3,
  warmup: int = 1,
  peak_gflops: float | None = None,
  size: str = "custom",
) -> dict[str, Any]:
  """Times the dynamics phase's shortcut-forcing train step (short windows).

  The step is the trainer's (`TrainStep` of the phase's `dynamics_loss`: the shortcut
  loss over `make_training_fn`, then the RMS normaliser). It is fed synthetic batches of the store's shapes: latents
  in [-1, 1] (tanh range) of `latent_shape` (the toy tokenizer's 16 x 16 by default), toy
  actions (5 moves) and labels, so no trained tokenizer is needed; the step's cost does not
  depend on the values.

  Returns:
    A JSON-ready dict like `run_train_step`'s, with the bootstrap share and the analytic
    FLOPs split into the gradient pass and the bootstrap passes.
  """
  import jax
  import numpy as np

  from benchmarks import flops as fl
  from data_pipelines import loader
  from data_pipelines.envs.base import ActionComponent, ActionSpec
  from dreamer4 import sharding as shd
  from dreamer4.objectives import normalize
  from dreamer4.phases.dynamics import dynamics_loss
  from dreamer4.runs import dynamics_model_def
  from dreamer4.training import state as st

  if steps < 1 or warmup < 1:
    raise ValueError(f"need --steps >= 1 and --warmup >= 1, got {steps} and {warmup}")
  N, L = latent_shape
  spec = ActionSpec((ActionComponent("move", "discrete", 5),))
  mdef = dynamics_model_def(config.model, N, L, spec)
  if mesh is None:
    mesh = shd.make_mesh(config.mesh)
  B, T = int(config.train.batch_size), int(config.data.window)
  shd.check_batch_divides(B, mesh)

  def loss_fn(params, aux, batch, rng, frozen):
    del frozen
    return dynamics_loss(mdef, config, params, aux, batch, rng)

  p_train = st.TrainStep(mdef, loss_fn, lambda: normalize.rms_init(("dynamics",)), config.optim, 1000, mesh)
  key = jax.random.key(0)
  rng = np.random.default_rng(0)
  batches = [
    dict(
      latents=np.tanh(rng.normal(size=(B, T, N, L))).astype(np.float32),
      actions_discrete=rng.integers(0, 5, (B, T, 1)).astype(np.int32),
      action_labelled=np.ones((B, T), bool),
    )
    for _ in range(warmup + steps)
  ]
  with jax.set_mesh(mesh):
    state = p_train.init(key)
    device_batches = [loader.global_batch(b, mesh) for b in batches]
    timed = _compile_and_time(p_train, state, device_batches, key, {}, warmup=warmup)
  compile_s, times, metrics = timed["compile_s"], timed["times"], timed["metrics"]
  xla_flops = timed["cost"].get("flops", 0.0)
  step_s = statistics.median(times)
  analytic = fl.dynamics_train_flops(config.model, N, L, B, T, float(config.loss.bootstrap_fraction))
  result = dict(
    bench="train_step",
    phase="dynamics",
    size=size,
    devices=int(mesh.size),
    batch=B,
    window=T,
    latent_shape=[int(N), int(L)],
    bootstrap_fraction=float(config.loss.bootstrap_fraction),
    params=int(mdef.num_params()),
    compiles=p_train.compiles,
    compile_s=compile_s,
    steps=len(times),
    step_s=step_s,
    step_s_min=min(times),
    frames_per_s=B * T / step_s,
    flops_analytic=int(analytic["total"]),
    flops_analytic_parts={k: int(v) for k, v in analytic.items() if k != "total"},
    flops_xla=xla_flops,
    analytic_over_xla=analytic["total"] / xla_flops if xla_flops else None,
    achieved_gflops=analytic["total"] / step_s / 1e9,
    achieved_gflops_xla=xla_flops / step_s / 1e9,
    loss=float(np.asarray(jax.device_get(metrics["loss"]))),
  )
  if peak_gflops:
    result["peak_gflops"] = peak_gflops
    result["mfu"] = result["achieved_gflops"] / peak_gflops
    result["hfu"] = result["achieved_gflops_xla"] / peak_gflops
  return result


# ------------------------------------------------------------------------------------------ main


def _emit(record: dict, out_path: str):
  line = json.dumps(record, sort_keys=False)
  print(line, flush=True)
  if out_path:
    with open(out_path, "a", encoding="utf-8") as f:
      f.write(line + "\n")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  known = DYNAMICS_SIZES if _PHASE.value == "dynamics" else SIZES
  sizes = list(_SIZES.value or known)
  for s in sizes:
    if s not in known:
      raise app.UsageError(f"--sizes: unknown {_PHASE.value} size {s!r}; choose from {', '.join(known)}")
  if _DEVICES.value < 1:
    raise app.UsageError(f"--devices must be >= 1, got {_DEVICES.value}")
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  import jax

  if _DEVICES.value > 1:
    jax.config.update("jax_num_cpu_devices", _DEVICES.value)

  peak_sizes = [int(n) for n in _PEAK_SIZES.value]
  peaks = matmul_peak(peak_sizes)
  for rec in peaks:
    _emit(dict(rec, when="start"), _OUT.value)
  peak = max(r["gflops"] for r in peaks if r["n"] == max(peak_sizes))

  if _PHASE.value == "dynamics":
    for size in sizes:
      peak = max(peak, max(r["gflops"] for r in matmul_peak([max(peak_sizes)], repeats=3)))
      rec = run_dynamics_step(
        dynamics_size_config(size), steps=_STEPS.value, warmup=_WARMUP.value, peak_gflops=peak, size=size
      )
      _emit(rec, _OUT.value)
    return

  with tempfile.TemporaryDirectory(prefix="bench-train-step-") as tmp:
    data_path = _DATA.value
    if not data_path:
      from data_pipelines.collect import collect

      data_path = os.path.join(tmp, "toy64")
      collect("toy", data_path, episodes=24, seed=0, skills=(0.9, 0.5, 0.0), size=64)
    for size in sizes:

      def peak_again(size=size) -> float:
        recs = matmul_peak([max(peak_sizes)], repeats=3)
        for rec in recs:
          _emit(dict(rec, when=f"before {size}"), _OUT.value)
        return max(r["gflops"] for r in recs)

      config = size_config(size)
      config.data.path = data_path
      rec = run_train_step(
        config, data_path, steps=_STEPS.value, warmup=_WARMUP.value, peak_gflops=peak, peak_fn=peak_again, size=size
      )
      peak = max(peak, rec.get("peak_gflops", 0.0))
      _emit(rec, _OUT.value)


if __name__ == "__main__":
  from dreamer4.host_memory import reexec_with_hugepages

  reexec_with_hugepages()  # as dreamer4/main.py does, so the steps are timed as the trainer runs them
  app.run(main)
