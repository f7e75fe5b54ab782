r"""Small-model train steps, a baseline checkout against this one, timed interleaved in one run.

  python -m benchmarks.train_step_ab --baseline_root=../basewt \
      [--phases=tokenizer,dynamics,dynamics_encoder,dynamics_toy] [--rounds=8] [--steps_per_round=2] \
      [--loss_steps=40] [--profile_steps=3] [--out=benchmarks/results/cpu_train_step_speedup.jsonl]

The baseline is another checkout of this repository, e.g. the code of a commit made with
`git worktree add --detach ../basewt <commit>` (a read-only copy; nothing is built in it).
For every phase this script starts two worker processes, each running THIS file's worker
code on one tree's packages (`PYTHONPATH` and the working directory set to that tree's
root): "base" on --baseline_root, "new" on this checkout. Each worker builds the phase's
train step the trainer builds (`dreamer4.training.state.TrainStep`: AdamW, donated state,
one device), from that tree's configs and library code, compiles it once and waits (both
workers compile at the same time). Each worker starts as its tree's trainer would: from this
shell's environment less any `glibc.malloc.hugetlb` tunable, and then, first thing, the
re-exec that tree's dreamer4/main.py does (`host_memory.reexec_with_hugepages`) if the tree
has one; a baseline from before dreamer4/host_memory.py runs with glibc's defaults. The
record's `glibc_tunables` is what each worker saw. The driver then asks them in turn for `--steps_per_round` timed steps, `--rounds` times,
alternating which goes first, so a change in machine load hits both alike; the speedup is
median(base step) / median(new step) over all timed steps, and per round.

Phases (the shapes of the "small models fast too" issue; LPIPS off, float32):
  tokenizer         configs/tokenizer.py:toy at B = 4, T = 16, 32x32x3 frames, patch 4 (64 patches),
                    width 64 (2 heads x 32, SwiGLU 256), 8+8 layers, 16 latents x 32 channels.
  dynamics          configs/dynamics.py:toy at B = 4, T = 16 on latents 16 x 32 (width 128, 8 layers).
  dynamics_encoder  the dynamics step fed frames, its latents made in the step by the frozen
                    tokenizer's encoder above (random weights; a forward pass, no gradient).
  dynamics_toy      configs/dynamics.py:toy as `train_step.py --phase=dynamics --sizes=toy` times it
                    (B = 16, T = 8, latents 16 x 16): the size the README's MFU is quoted at.
Both workers get the same batches (a toy-world store collected at 32x32 for the frames,
seeded random latents and actions) and the same keys.

Loss check (--loss_steps > 0): each worker also trains a fresh state for that many steps on
the same batch sequence (both at once, untimed) and reports the per-step loss (the RMS-normalised loss the
optimiser sees, and the raw term: the tokenizer's MSE, the dynamics' shortcut loss).

Per-op profile (--profile_steps > 0): each worker captures a jax.profiler trace of that many
steps and sums XLA:CPU's op durations (thread time over the intra-op threads, so the
total exceeds the wall time when both cores work) per op category of the compiled HLO:
matmul (dot fusions), layout copy (transpose / copy fusions), reduce, elementwise, other.

MFU: a float32 2048^2 matmul peak is measured in the driver before and after the rounds
(best of both); MFU = analytic model FLOPs (benchmarks/flops.py) / median step / peak.
`cpu_s` (process CPU time per step, both threads) is the work done; on a machine shared with
other jobs it moves much less with the load than the wall time does. Progress lines (one per
phase) go to stderr, the JSON lines to stdout (and --out) at the end.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

PHASES = ("tokenizer", "dynamics", "dynamics_encoder", "dynamics_toy")
FRAME = (32, 32, 3)
B, T = 4, 16
LATENTS = (16, 32)
TOY_LATENTS = (16, 16)
TOY_B, TOY_T = 16, 8

# ------------------------------------------------------------------------------------- configs
# Run inside either tree: only configs.*.get_config and plain field writes.


def tokenizer_config():
  """The issue's tokenizer: configs/tokenizer.py:toy reshaped (see the module docstring)."""
  from configs import tokenizer

  c = tokenizer.get_config("toy")
  m = c.model
  m.patch_size = 4
  m.num_latents, m.latent_dim = LATENTS
  m.width = 64
  m.num_heads = m.num_kv_heads = 2
  m.head_dim = 32
  m.mlp_dim = 256
  m.enc_depth = m.dec_depth = 8
  m.context = T  # = data.window
  c.data.window = T
  c.train.batch_size = B
  c.loss.lpips_weight = 0.0
  return c


def dynamics_config(phase: str):
  from configs import dynamics

  c = dynamics.get_config("toy")
  if phase != "dynamics_toy":
    c.data.window = T
    c.train.batch_size = B
  return c


# ------------------------------------------------------------------------------------- worker


def _build(phase: str, frozen_seed: int = 1):
  """(TrainStep, frozen inputs, mesh, analytic FLOPs or None) of `phase` in the tree on sys.path."""
  import jax
  import ml_collections
  from flax import nnx

  from dreamer4 import sharding as shd
  from dreamer4.objectives import normalize
  from dreamer4.training import state as st

  mesh = shd.make_mesh(ml_collections.ConfigDict({"preset": "single", "shape": (1, 1, 1), "num_devices": 1}))
  if phase == "tokenizer":
    from dreamer4.models.tokenizer import Tokenizer
    from dreamer4.objectives.tokenizer import tokenizer_loss

    c = tokenizer_config()
    mdef = st.ModelDef.build(lambda rng: Tokenizer.from_config(c.model, FRAME, nnx.Rngs(rng)))

    def loss_fn(params, aux, batch, rng, frozen):
      del frozen
      loss, (aux, metrics) = tokenizer_loss(
        mdef.merge(params),
        None,
        batch["frames"],
        aux,
        rng,
        lpips_weight=0.0,
        lpips_frames=0,
        max_mask_prob=c.loss.max_mask_prob,
        rms_decay=c.loss.rms_decay,
      )
      return loss, (aux, dict(metrics, raw=metrics["mse"]))

    step = st.TrainStep(mdef, loss_fn, lambda: normalize.rms_init(("mse", "lpips")), c.optim, 1000, mesh)
    return step, {}, mesh
  from data_pipelines.envs.base import ActionComponent, ActionSpec
  from dreamer4.phases.dynamics import dynamics_loss
  from dreamer4.runs import dynamics_model_def

  c = dynamics_config(phase)
  N, L = TOY_LATENTS if phase == "dynamics_toy" else LATENTS
  spec = ActionSpec((ActionComponent("move", "discrete", 5),))
  mdef = dynamics_model_def(c.model, N, L, spec)
  frozen = {}
  if phase == "dynamics_encoder":
    from dreamer4.models.tokenizer import Tokenizer

    tc = tokenizer_config()
    tdef = st.ModelDef.build(lambda rng: Tokenizer.from_config(tc.model, FRAME, nnx.Rngs(rng)))
    frozen = {"tokenizer": jax.jit(tdef.init_params)(jax.random.key(frozen_seed))}

    def loss_fn(params, aux, batch, rng, frozen):
      tok = tdef.merge(frozen["tokenizer"])
      z = jax.lax.stop_gradient(tok.encode(batch["frames"].astype("float32") / 255.0))
      batch = {k: v for k, v in batch.items() if k != "frames"}
      loss, (aux, metrics) = dynamics_loss(mdef, c, params, aux, dict(batch, latents=z), rng)
      return loss, (aux, dict(metrics, raw=metrics["shortcut_loss"]))

  else:

    def loss_fn(params, aux, batch, rng, frozen):
      del frozen
      loss, (aux, metrics) = dynamics_loss(mdef, c, params, aux, batch, rng)
      return loss, (aux, dict(metrics, raw=metrics["shortcut_loss"]))

  step = st.TrainStep(mdef, loss_fn, lambda: normalize.rms_init(("dynamics",)), c.optim, 1000, mesh)
  return step, frozen, mesh


def _hlo_categories(hlo_text: str) -> dict[str, str]:
  """Op category of every instruction of the compiled module's entry computation."""
  comps, name = {}, None
  for line in hlo_text.splitlines():
    m = re.match(r"^(?:ENTRY )?%([\w.\-]+) .*\{$", line)
    if m:
      name = m.group(1)
      comps[name] = []
    elif name is not None:
      m = re.match(r"\s*(?:ROOT )?%[\w.\-]+ = \S+ ([\w\-]+)\(", line)
      if m:
        comps[name].append(m.group(1))
  called = {}
  for line in hlo_text.splitlines():
    m = re.match(r"\s*(?:ROOT )?%([\w.\-]+) = \S+ ([\w\-]+)\(.*?(?:calls|to_apply)=%([\w.\-]+)", line)
    if m:
      called[m.group(1)] = comps.get(m.group(3), [])
  out = {}
  for line in hlo_text.splitlines():
    m = re.match(r"\s*(?:ROOT )?%([\w.\-]+) = \S+ ([\w\-]+)\(", line)
    if not m:
      continue
    inst, op = m.groups()
    ops = set(called.get(inst, [])) | {op}
    if ops & {"dot", "convolution"}:
      cat = "matmul"
    elif ops & {"reduce", "reduce-window"}:
      cat = "reduce"
    elif op in ("copy", "transpose") or inst.startswith(("copy", "transpose")):
      cat = "layout copy"
    elif op in ("fusion", "add", "multiply", "subtract", "divide", "select", "exponential", "tanh", "broadcast"):
      cat = "elementwise"
    else:
      cat = "other"
    out[inst] = cat
  return out


def _profile(run_steps, n: int, hlo_text: str) -> dict:
  """ms per step of XLA op time per category (and the top fusions) over `n` traced steps."""
  import glob
  import gzip

  import jax

  cats = _hlo_categories(hlo_text)
  with tempfile.TemporaryDirectory(prefix="ab-trace-") as tmp:
    jax.profiler.start_trace(tmp)
    run_steps(n)
    jax.profiler.stop_trace()
    (path,) = glob.glob(os.path.join(tmp, "**", "*.trace.json.gz"), recursive=True)
    with gzip.open(path) as f:
      trace = json.load(f)
  threads = {
    (e["pid"], e["tid"]): e["args"]["name"]
    for e in trace["traceEvents"]
    if e.get("ph") == "M" and e.get("name") == "thread_name"
  }
  per_cat, per_op = collections.Counter(), collections.Counter()
  for e in trace["traceEvents"]:
    if e.get("ph") != "X" or not threads.get((e["pid"], e["tid"]), "").startswith("tf_XLA"):
      continue
    if e["name"] not in cats:  # executor and thread-pool spans, not ops
      continue
    per_cat[cats[e["name"]]] += e["dur"]
    per_op[re.sub(r"\.\d+$", "", e["name"])] += e["dur"]
  ms = lambda us: round(us / 1e3 / n, 2)
  return dict(
    op_ms_per_step=ms(sum(per_cat.values())),
    by_category={k: ms(v) for k, v in per_cat.most_common()},
    top_op_kinds={k: ms(v) for k, v in per_op.most_common(12)},
  )


def worker_main(phase: str, batches_path: str):
  """Builds and compiles the step, then serves JSON-line commands on stdin (see `Worker`)."""
  import resource

  import jax
  import numpy as np

  from data_pipelines import loader

  data = np.load(batches_path)
  fields = sorted({k.split("/", 1)[1] for k in data.files})
  count = len({k.split("/", 1)[0] for k in data.files})
  step, frozen, mesh = _build(phase)
  key = jax.random.key(0)
  with jax.set_mesh(mesh):
    batches = [loader.global_batch({f: data[f"{i}/{f}"] for f in fields}, mesh) for i in range(count)]
    frozen = jax.device_put(frozen, step.replicated)
    state = step.init(key)
    t0 = time.perf_counter()
    compiled = step.compile(state, batches[0], key, frozen)
    compile_s = time.perf_counter() - t0
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    state, _ = step(state, batches[0], key, frozen)  # warm-up
    jax.block_until_ready(state)
    done = 0

    def run_steps(n):
      """[wall s, process CPU s (all threads), minor page faults] of each of `n` steps."""
      nonlocal state, done
      times = []
      for _ in range(n):
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t0, c0 = time.perf_counter(), time.process_time()
        state, _ = step(state, batches[done % count], key, frozen)
        jax.block_until_ready(state)
        times.append([time.perf_counter() - t0, time.process_time() - c0])
        times[-1].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
        done += 1
      return times

    reply = lambda obj: print(json.dumps(obj), flush=True)
    reply(
      dict(
        ready=True,
        jax=jax.__version__,
        glibc_tunables=os.environ.get("GLIBC_TUNABLES", ""),
        params=int(sum(x.size for x in jax.tree.leaves(state["params"]))),
        compile_s=compile_s,
        temp_bytes=int(compiled.memory_analysis().temp_size_in_bytes),
        flops_xla=float(cost.get("flops", 0.0)),
        bytes_accessed_xla=float(cost.get("bytes accessed", 0.0)),
        transcendentals_xla=float(cost.get("transcendentals", 0.0)),
      )
    )
    for line in sys.stdin:
      cmd = json.loads(line)
      if cmd["cmd"] == "time":
        reply(run_steps(int(cmd["n"])))
      elif cmd["cmd"] == "losses":
        fresh = step.init(key)
        curve = []
        for i in range(int(cmd["n"])):
          fresh, metrics = step(fresh, batches[i % count], key, frozen)
          curve.append([float(metrics["loss"]), float(metrics["raw"])])
        reply(curve)
      elif cmd["cmd"] == "rss":
        reply(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
      elif cmd["cmd"] == "profile":
        reply(_profile(run_steps, int(cmd["n"]), compiled.as_text()))
      else:
        break
  assert step.compiles == 1, step.compiles


# ------------------------------------------------------------------------------------- driver

_BOOT = "import runpy, sys; sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"


class Worker:
  """One tree's worker process: JSON-line commands in, one JSON line out per command."""

  def __init__(self, name: str, root: str, phase: str, batches_path: str):
    self.name = name
    root = os.path.abspath(root)
    env = dict(entry_env(), PYTHONPATH=root)
    args = [sys.executable, "-c", _BOOT, os.path.abspath(__file__), "--worker", phase, batches_path]
    self.proc = subprocess.Popen(args, cwd=root, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    self.info = None  # the "ready" reply, read by `wait_ready` (both workers compile at once)

  def wait_ready(self):
    self.info = self._read()
    return self

  def _read(self):
    line = self.proc.stdout.readline()
    if not line:
      raise RuntimeError(f"worker {self.name} exited with {self.proc.wait()}")
    return json.loads(line)

  def send(self, cmd: str, n: int):
    self.proc.stdin.write(json.dumps(dict(cmd=cmd, n=n)) + "\n")
    self.proc.stdin.flush()

  def ask(self, cmd: str, n: int):
    self.send(cmd, n)
    return self._read()

  def close(self):
    if self.proc.poll() is None:
      self.proc.stdin.write(json.dumps(dict(cmd="quit")) + "\n")
      self.proc.stdin.flush()
    if self.proc.wait() != 0:
      raise RuntimeError(f"worker {self.name} exited with {self.proc.returncode}")


def entry_env() -> dict[str, str]:
  """This shell's environment less any `glibc.malloc.hugetlb` tunable: each worker starts as
  its tree's trainer would be started from a plain shell. A tree whose entry points
  re-execute with the tunable (it has dreamer4/host_memory.py) gets it the same way, by the
  worker re-executing itself first thing (`_worker_reexec`); a tree without it runs without."""
  env = dict(os.environ)
  keep = [t for t in env.get("GLIBC_TUNABLES", "").split(":") if t and not t.startswith("glibc.malloc.hugetlb=")]
  if keep:
    env["GLIBC_TUNABLES"] = ":".join(keep)
  else:
    env.pop("GLIBC_TUNABLES", None)
  return env


def _worker_reexec() -> None:
  """What the tree's `dreamer4/main.py` does before anything else, if it does it."""
  try:
    from dreamer4.host_memory import reexec_with_hugepages
  except ImportError:  # a tree from before dreamer4/host_memory.py
    return
  reexec_with_hugepages()


def _write_batches(path: str, phase: str, count: int, frames_store: str | None):
  """`count` batches of `phase` into one .npz (keys "<i>/<field>"), identical for both workers."""
  import numpy as np

  rng = np.random.default_rng(0)
  bt = (TOY_B, TOY_T) if phase == "dynamics_toy" else (B, T)
  batches = []
  if phase in ("tokenizer", "dynamics_encoder"):
    from benchmarks.train_step import _read_batches

    frames = [b["frames"] for b in _read_batches(frames_store, T, B, count)]
    batches = [dict(frames=f) for f in frames]
  else:
    N, L = TOY_LATENTS if phase == "dynamics_toy" else LATENTS
    batches = [dict(latents=np.tanh(rng.normal(size=bt + (N, L))).astype(np.float32)) for _ in range(count)]
  if phase != "tokenizer":
    for b in batches:
      b["actions_discrete"] = rng.integers(0, 5, bt + (1,)).astype(np.int32)
      b["action_labelled"] = np.ones(bt, bool)
  np.savez(path, **{f"{i}/{k}": v for i, b in enumerate(batches) for k, v in b.items()})


def _analytic_flops(phase: str) -> float | None:
  from benchmarks import flops as fl

  if phase == "tokenizer":
    c = tokenizer_config()
    return float(fl.tokenizer_train_flops(c.model, FRAME, B, T, lpips=False)["total"])
  if phase in ("dynamics", "dynamics_toy"):
    c = dynamics_config(phase)
    N, L = TOY_LATENTS if phase == "dynamics_toy" else LATENTS
    return float(
      fl.dynamics_train_flops(
        c.model, N, L, int(c.train.batch_size), int(c.data.window), float(c.loss.bootstrap_fraction)
      )["total"]
    )
  return None  # dynamics_encoder: the encoder's forward pass is not in flops.py


def run_phase(phase: str, args, data_dir: str, frames_store: str | None, peak: float) -> dict:
  batches_path = os.path.join(data_dir, f"{phase}.npz")
  _write_batches(batches_path, phase, max(8, args.loss_steps), frames_store)
  workers = {}
  for name, root in (
    ("base", args.baseline_root),
    ("new", os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
  ):
    workers[name] = Worker(name, root, phase, batches_path)
  for w in workers.values():
    w.wait_ready()
  try:
    times = {name: [] for name in workers}
    cpu = {name: [] for name in workers}
    faults = {name: [] for name in workers}
    rounds = []
    for r in range(args.rounds):
      order = list(workers) if r % 2 == 0 else list(reversed(workers))
      got = {name: workers[name].ask("time", args.steps_per_round) for name in order}
      for name, t in got.items():
        times[name] += [x[0] for x in t]
        cpu[name] += [x[1] for x in t]
        faults[name] += [x[2] for x in t]
      wall = {name: statistics.median(x[0] for x in t) for name, t in got.items()}
      rounds.append(wall["base"] / wall["new"])
    rss = {name: w.ask("rss", 0) for name, w in workers.items()}
    curves = {}
    if args.loss_steps:  # untimed: both workers at once
      for w in workers.values():
        w.send("losses", args.loss_steps)
      curves = {name: w._read() for name, w in workers.items()}
    prof = {name: w.ask("profile", args.profile_steps) for name, w in workers.items()} if args.profile_steps else {}
  finally:
    for w in workers.values():
      w.close()
  med = {name: statistics.median(t) for name, t in times.items()}
  rec = dict(
    bench="train_step_ab",
    phase=phase,
    baseline_root=args.baseline_root,
    rounds=args.rounds,
    steps_per_round=args.steps_per_round,
    step_s={name: med[name] for name in workers},
    step_s_min={name: min(t) for name, t in times.items()},
    speedup=med["base"] / med["new"],
    speedup_min=min(times["base"]) / min(times["new"]),
    speedup_per_round=[round(x, 3) for x in rounds],
    # Process CPU time per step (both threads): the work done, less sensitive to other
    # processes on the machine than the wall time (which also counts time not scheduled).
    cpu_s={name: statistics.median(c) for name, c in cpu.items()},
    cpu_speedup=statistics.median(cpu["base"]) / statistics.median(cpu["new"]),
    page_faults_per_step={name: statistics.median(f) for name, f in faults.items()},
    temp_bytes={name: w.info["temp_bytes"] for name, w in workers.items()},
    max_rss_bytes=rss,
    compile_s={name: w.info["compile_s"] for name, w in workers.items()},
    flops_xla={name: w.info["flops_xla"] for name, w in workers.items()},
    bytes_accessed_xla={name: w.info["bytes_accessed_xla"] for name, w in workers.items()},
    transcendentals_xla={name: w.info["transcendentals_xla"] for name, w in workers.items()},
    params={name: w.info["params"] for name, w in workers.items()},
    glibc_tunables={name: w.info["glibc_tunables"] for name, w in workers.items()},
    jax=workers["new"].info["jax"],
  )
  analytic = _analytic_flops(phase)
  if analytic:
    rec["flops_analytic"] = analytic
    rec["peak_gflops"] = peak
    rec["mfu"] = {name: analytic / med[name] / (peak * 1e9) for name in workers}
  if curves:
    base, new = curves["base"], curves["new"]
    diff = lambda j: max(abs(a[j] - b[j]) / max(abs(a[j]), 1e-12) for a, b in zip(base, new))
    rec["loss_steps"] = args.loss_steps
    rec["loss_max_rel_diff"] = diff(0)
    rec["raw_loss_max_rel_diff"] = diff(1)
    rec["loss_curve"] = {name: [round(x[0], 6) for x in c] for name, c in curves.items()}
    rec["raw_loss_curve"] = {name: [round(x[1], 6) for x in c] for name, c in curves.items()}
  if prof:
    rec["profile"] = prof
  return rec


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--baseline_root", default="", help="root of the baseline checkout (required)")
  p.add_argument("--phases", default=",".join(PHASES[:3]), help=f"comma list of {', '.join(PHASES)}")
  p.add_argument("--rounds", type=int, default=8)
  p.add_argument("--steps_per_round", type=int, default=2)
  p.add_argument("--loss_steps", type=int, default=40, help="steps of the loss check (0: none)")
  p.add_argument("--profile_steps", type=int, default=0, help="traced steps per worker (0: no profile)")
  p.add_argument("--peak_size", type=int, default=2048)
  p.add_argument("--out", default="", help="also append the JSON lines to this file")
  p.add_argument("--worker", nargs=2, metavar=("PHASE", "BATCHES"), help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args.worker:
    _worker_reexec()
    return worker_main(*args.worker)
  if not args.baseline_root:
    p.error("--baseline_root is required")
  phases = [x for x in args.phases.split(",") if x]
  for x in phases:
    if x not in PHASES:
      p.error(f"unknown phase {x!r}; choose from {', '.join(PHASES)}")
  os.environ.setdefault("JAX_PLATFORMS", "cpu")

  from benchmarks.train_step import matmul_peak

  def emit(rec):
    line = json.dumps(rec)
    print(line, flush=True)
    if args.out:
      with open(args.out, "a", encoding="utf-8") as f:
        f.write(line + "\n")

  peak_rec = matmul_peak([args.peak_size])[0]
  emit(dict(peak_rec, when="start"))
  with tempfile.TemporaryDirectory(prefix="train-step-ab-") as tmp:
    frames_store = None
    if {"tokenizer", "dynamics_encoder"} & set(phases):
      from data_pipelines.collect import collect

      frames_store = os.path.join(tmp, "toy32")
      collect("toy", frames_store, episodes=24, seed=0, skills=(0.9, 0.5, 0.0), size=FRAME[0])
    recs = []
    for phase in phases:
      recs.append(run_phase(phase, args, tmp, frames_store, peak_rec["gflops"]))
      r = recs[-1]
      print(
        f"[{phase}] step base {r['step_s']['base']:.3f} s, new {r['step_s']['new']:.3f} s: {r['speedup']:.2f}x "
        f"(cpu {r['cpu_speedup']:.2f}x); loss max rel diff {r.get('loss_max_rel_diff', float('nan')):.2e}",
        file=sys.stderr,
        flush=True,
      )
    end = matmul_peak([args.peak_size])[0]
    emit(dict(end, when="end"))
    peak = max(peak_rec["gflops"], end["gflops"])
    for rec in recs:
      if "mfu" in rec:
        rec["peak_gflops"] = peak
        rec["mfu"] = {k: rec["flops_analytic"] / v / (peak * 1e9) for k, v in rec["step_s"].items()}
      emit(rec)


if __name__ == "__main__":
  main()
