r"""`--dry_run`: compile a phase's train step on the configured mesh without data or parameters.

  python -m dreamer4.main --dry_run --config=configs/dynamics.py:paper --cpu_devices=8 \
      --config.train.batch_size=8

builds the phase's model definition and the same jitted train step as the trainer
(dreamer4/training/trainer.py), lowers it with abstract inputs (`jax.ShapeDtypeStruct`s
carrying the mesh shardings: nothing is initialised, no data is read), compiles it, and
reports per step shape (short and, for the dynamics phase, long windows):

  params_total / params_per_device    model parameters (per device: the largest shard set)
  state_bytes_per_device              params + optimiser state + aux, as sharded
  memory (per device, from `compiled.memory_analysis()`): argument / output / alias /
      temp / generated-code bytes, and peak = argument + output - alias + temp
  flops_per_device (`compiled.cost_analysis()`) and flops_total = flops_per_device x devices
  analytic: the memory plan of dreamer4/memory_plan.py, computed from the config alone
      (parameters, Adam state, gradients, per-layer activations under the remat policy, the
      peak under every policy), its peak next to the compiler's and their ratio; "traced"
      accounting on CPU devices, "fused" on GPUs/TPUs, the other one alongside

The workdir is never touched. Shapes that the store would give a real run come from
the config when no store is named: `config.data.frame_shape` (tokenizer) and
`config.data.latent_shape` (dynamics; or the tokenizer workdir's config.json).

Caveat: the compiler is the one of the devices present. With fake CPU devices
(--cpu_devices) the numbers are XLA:CPU's, which only approximate a GPU/TPU compile
(different fusion; XLA:CPU computes bf16 matmuls in float32, so some bf16 activations are
counted at 4 bytes). XLA:CPU's default concurrency-optimised scheduler hoists rematerialised
forward passes out of the backward pass, which undoes remat in the estimate;
`memory_aware_cpu_scheduler()` (called by main before the backend starts) switches it to
the memory-optimised scheduler. Even so, XLA:CPU keeps more of each rematerialised layer
alive than remat alone would (the estimate grows by several GiB per layer at paper scale),
so with many unrolled layers the CPU figure is an upper bound.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from data_pipelines.envs.base import ActionComponent, ActionSpec
from dreamer4 import memory_plan
from dreamer4 import sharding as shd
from dreamer4.errors import ConfigError
from dreamer4.training import state as st
from dreamer4.training.phase import DataShapes

# Action space assumed when no store is named (dynamics): a VPT-style Minecraft action,
# 20 binary keys plus a foveated 11x11 mouse grid. Only the action table's size (about
# (40 + 121) x width parameters) depends on it.
ASSUMED_ACTIONS = ActionSpec((ActionComponent("keys", "binary", 20), ActionComponent("mouse", "discrete", 121)))


CPU_SCHEDULER_FLAG = "--xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"


def memory_aware_cpu_scheduler() -> None:
  """Adds CPU_SCHEDULER_FLAG to XLA_FLAGS; must run before the XLA backend starts.

  (Passing it as a per-compile option is accepted but has no effect in jax 0.10.2.)
  """
  import os

  flags = os.environ.get("XLA_FLAGS", "")
  if "xla_cpu_scheduler_type" not in flags and "xla_cpu_enable_concurrency_optimized_scheduler" not in flags:
    os.environ["XLA_FLAGS"] = f"{flags} {CPU_SCHEDULER_FLAG}".strip()


def _store_or_config(config) -> DataShapes:
  path = config.data.path
  if path:  # metadata only; no window is read
    from data_pipelines.episodes import EpisodeStore

    return DataShapes.of_store(EpisodeStore.open(path))
  frame_shape = config.data.frame_shape
  return DataShapes(
    path="(no store: config.data.frame_shape)",
    frame_shape=tuple(frame_shape) if frame_shape else None,
    action_spec=ASSUMED_ACTIONS,
  )


def _tokenizer_phase(config, shapes: DataShapes):
  from dreamer4.phases.tokenizer import TokenizerPhase

  if not shapes.frame_shape:
    raise ConfigError(
      "--dry_run of the tokenizer needs the frame shape: set --config.data.path=STORE "
      "or --config.data.frame_shape=(H,W,C)"
    )
  phase = TokenizerPhase(config, shapes)
  return phase, {"frames": (tuple(shapes.frame_shape), jnp.uint8)}, None


def _latent_shape(config) -> tuple[int, int]:
  workdir = config.tokenizer_workdir
  if workdir:
    from dreamer4.runs import read_config

    tcfg = read_config(
      workdir,
      "tokenizer",
      "train the tokenizer first, or leave --config.tokenizer_workdir "
      "empty and set --config.data.latent_shape=(N,L) for a dry run",
    )
    return int(tcfg.model.num_latents), int(tcfg.model.latent_dim)
  shape = config.data.latent_shape
  if not shape or len(shape) != 2:
    raise ConfigError(
      "--dry_run of the dynamics phase needs the latent shape: set "
      "--config.tokenizer_workdir=DIR or --config.data.latent_shape=(num_latents,latent_dim)"
    )
  return int(shape[0]), int(shape[1])


def _dynamics_phase(config, shapes: DataShapes):
  from dreamer4.phases.dynamics import DynamicsPhase

  N, L = _latent_shape(config)
  spec = shapes.action_spec
  # The phase from shapes only, without its frozen tokenizer and store checks (`load_frozen`):
  # only loss_fn is used here, and the train step never reads the tokenizer.
  phase = DynamicsPhase(config, dataclasses.replace(shapes, latent_shape=(N, L)))
  fields = {"latents": ((N, L), jnp.float32), "action_labelled": ((), jnp.bool_)}
  if spec.discrete_columns:
    fields["actions_discrete"] = ((spec.discrete_columns,), jnp.int32)
  return phase, fields, (N, L)


def build_phase(config):
  """(shapes, phase, batch fields, latent shape) of a tokenizer or dynamics config, from the
  store's metadata or the config alone. `fields` maps each batch field to its per-frame
  (shape, dtype). The dynamics phase is built without its frozen tokenizer: only its
  loss_fn is used, and the train step never reads the tokenizer."""
  shapes = _store_or_config(config)
  make = _tokenizer_phase if config.phase == "tokenizer" else _dynamics_phase
  phase, fields, latent_shape = make(config, shapes)
  return shapes, phase, fields, latent_shape


def _bytes_per_device(abstract_tree, shardings) -> int:
  total = 0
  for x, s in zip(jax.tree.leaves(abstract_tree), jax.tree.leaves(shardings)):
    total += math.prod(s.shard_shape(x.shape)) * np.dtype(x.dtype).itemsize
  return total


def _count_per_device(abstract_tree, shardings) -> int:
  return sum(
    math.prod(s.shard_shape(x.shape)) for x, s in zip(jax.tree.leaves(abstract_tree), jax.tree.leaves(shardings))
  )


def _memory(compiled) -> dict[str, int]:
  m = compiled.memory_analysis()
  if m is None:
    return {}
  out = {
    k: int(getattr(m, f"{k}_size_in_bytes", 0) or 0) for k in ("argument", "output", "alias", "temp", "generated_code")
  }
  out["peak"] = out["argument"] + out["output"] - out["alias"] + out["temp"]
  return out


def _flops(compiled) -> float:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older jax: one dict per program
    cost = cost[0] if cost else {}
  return float((cost or {}).get("flops", 0.0))


def dry_run(config) -> dict[str, Any]:
  """Compiles the train step of `config.phase` on `config.mesh`; returns the report dict."""
  if config.phase not in ("tokenizer", "dynamics"):
    raise ConfigError(f"--dry_run supports the tokenizer and dynamics phases, not --config.phase={config.phase!r}")
  t0 = time.time()
  ctc = config.train
  mesh = shd.make_mesh(config.mesh)
  shd.check_batch_divides(ctc.batch_size, mesh)
  shapes, phase, fields, latent_shape = build_phase(config)
  frozen_np = phase.frozen() if config.phase == "tokenizer" else {}  # the LPIPS weights, if any
  mdef = phase.model_def
  # The trainer's step (dreamer4/training/trainer.py), built the same way; abstract state only.
  p_train = st.TrainStep(mdef, phase.loss_fn, phase.init_aux, config.optim, ctc.num_steps, mesh)
  rep = p_train.replicated
  state_in = p_train.abstract_state()
  frozen_in = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype, sharding=rep), frozen_np)
  key = jax.random.key(ctc.seed)
  key_in = jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=rep)

  windows = {"short": int(config.data.window)}
  if int(config.data.get("long_window", 0)):  # dynamics configs only
    windows["long"] = int(config.data.long_window)
  n_dev = mesh.devices.size
  keeps = "traced" if mesh.devices.flat[0].platform == "cpu" else "fused"
  plan_args = dict(
    latent_shape=latent_shape,
    frame_shape=shapes.frame_shape and tuple(shapes.frame_shape),
    action_spec=shapes.action_spec,
  )
  report: dict[str, Any] = dict(
    phase=config.phase,
    variant=config.variant,
    devices=int(n_dev),
    mesh={k: int(v) for k, v in mesh.shape.items()},
    global_batch=int(ctc.batch_size),
    compute_dtype=str(config.model.dtype),
    remat=bool(config.model.remat),
    params_total=mdef.num_params(),
    params_per_device=_count_per_device(mdef.abstract_params, p_train.param_shardings),
    state_bytes_per_device=_bytes_per_device(p_train.abstract, p_train.shardings),
    frame_shape=list(shapes.frame_shape) if shapes.frame_shape else None,
    latent_shape=list(latent_shape) if latent_shape else None,
    steps={},
  )
  for kind, T in windows.items():
    batch_in = {
      f: jax.ShapeDtypeStruct(
        (ctc.batch_size, T) + tuple(shape), dtype, sharding=shd.batch_sharding(mesh, 2 + len(shape))
      )
      for f, (shape, dtype) in fields.items()
    }
    t1 = time.time()
    lowered = p_train.lower(state_in, batch_in, key_in, frozen_in)
    t2 = time.time()
    compiled = lowered.compile()
    t3 = time.time()
    flops = _flops(compiled)
    memory = _memory(compiled)
    plans = {k: memory_plan.plan(config, report["mesh"], T, keeps=k, **plan_args) for k in memory_plan.KEEPS}
    analytic = dict(plans[keeps], ratio=round(plans[keeps]["peak"] / memory["peak"], 4) if memory.get("peak") else None)
    analytic["other"] = {k: plans[k]["peak"] for k in memory_plan.KEEPS if k != keeps}
    report["steps"][kind] = dict(
      window=T,
      lower_s=round(t2 - t1, 2),
      compile_s=round(t3 - t2, 2),
      memory_per_device=memory,
      flops_per_device=flops,
      flops_total=flops * n_dev,
      analytic=analytic,
    )
    logging.info("dry run: %s step (window %d) compiled in %.1f s", kind, T, t3 - t2)
  report["wall_s"] = round(time.time() - t0, 2)
  return report


def _gb(b) -> str:
  return f"{b / 2**30:.2f} GiB" if b >= 2**30 else f"{b / 2**20:.1f} MiB"


def format_report(r: dict[str, Any]) -> str:
  """Human-readable lines (the JSON follows on the last line)."""
  lines = [
    f"dry run: {r['phase']} ({r['variant']}) on {r['devices']} devices, mesh {r['mesh']}, "
    f"global batch {r['global_batch']}, compute {r['compute_dtype']}, remat {r['remat']}",
    f"  parameters: {r['params_total']:,} total, {r['params_per_device']:,} per device",
    f"  train state (params + optimiser + aux): {_gb(r['state_bytes_per_device'])} per device",
  ]
  for kind, s in r["steps"].items():
    m = s["memory_per_device"]
    lines.append(f"  {kind} step, window {s['window']}: compiled in {s['compile_s']} s")
    if m:
      lines.append(
        f"    memory per device: peak {_gb(m['peak'])} = arguments {_gb(m['argument'])} + outputs "
        f"{_gb(m['output'])} - aliased {_gb(m['alias'])} + temporaries {_gb(m['temp'])} "
        f"(code {_gb(m['generated_code'])})"
      )
    lines.append(
      f"    FLOPs per step: {s['flops_per_device']:.4g} per device, {s['flops_total']:.4g} summed over "
      f"devices (replicated work counts once per device)"
    )
    a = s.get("analytic")
    if a:
      other = [dict(keeps=k, peak=v) for k, v in a["other"].items()]
      lines += memory_plan.format_plan(a, m.get("peak"), other[0] if other else None)
  return "\n".join(lines)
