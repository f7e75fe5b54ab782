"""The train state as a plain pytree, its shardings, the generic optimiser step, and
`TrainStep`, the one place that builds a model's jitted step on a mesh.

The state is a dict so that Orbax, jit shardings and donation all see the same tree:

  step       int32 []            optimiser steps taken (skipped non-finite steps excluded)
  params     nested dict         the trainable model's nnx.Param values (pure dict)
  opt_state  optax state
  aux        nested dict         phase-specific non-trainable state (e.g. RMS loss normalisers)
  nonfinite  int32 []            consecutive skipped steps (non-finite loss or gradient)
  skipped    int32 []            total skipped steps

Models are NNX modules; inside jitted code they are rebuilt from (graphdef, params) with
`ModelDef.merge`, so nothing about the module object is closed over as a constant.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh

from dreamer4 import sharding as shd
from dreamer4.aot import AotJit


@dataclasses.dataclass(frozen=True)
class ModelDef:
  """How to build, split and re-merge one NNX model without materialising it.

  Attributes:
    make: rng -> module (builds real parameters; called inside jit).
    graphdef: the static structure from `nnx.split`.
    abstract_state: the nnx.State of abstract Params (template for `merge`).
    abstract_params: pure dict of ShapeDtypeStruct, one per nnx.Param.
    logical_specs: pure dict of PartitionSpecs of logical axis names, matching abstract_params.
  """

  make: Callable[[jax.Array], nnx.Module]
  graphdef: Any
  abstract_state: Any
  abstract_params: Any
  logical_specs: Any

  @classmethod
  def build(cls, make: Callable[[jax.Array], nnx.Module]) -> ModelDef:
    with nnx.use_eager_sharding(False):
      module = nnx.eval_shape(lambda: make(jax.random.key(0)))
    graphdef, params = nnx.split(module, nnx.Param)
    specs = nnx.get_partition_spec(params)
    return cls(
      make=make,
      graphdef=graphdef,
      abstract_state=params,
      abstract_params=params.to_pure_dict(),
      logical_specs=specs.to_pure_dict(),
    )

  def init_params(self, rng: jax.Array):
    with nnx.use_eager_sharding(False):
      module = self.make(rng)
    return nnx.state(module, nnx.Param).to_pure_dict()

  def merge(self, params) -> nnx.Module:
    """A module whose nnx.Param values are `params` (a pure dict); works under jit."""
    state = jax.tree.map(lambda x: x, self.abstract_state)  # a fresh copy: replace_by_pure_dict mutates
    nnx.replace_by_pure_dict(state, params)
    return nnx.merge(self.graphdef, state)

  def param_shardings(self, mesh: Mesh):
    return shd.tree_shardings(self.abstract_params, self.logical_specs, mesh)

  def num_params(self) -> int:
    return sum(int(x.size) for x in jax.tree.leaves(self.abstract_params))


def make_optimizer(optim_cfg, num_steps: int) -> optax.GradientTransformation:
  """AdamW with warm-up + cosine (or constant) schedule and global-norm clipping."""
  warm = max(int(optim_cfg.warmup_steps), 0)
  if optim_cfg.decay == "cosine":
    sched = optax.warmup_cosine_decay_schedule(
      0.0, optim_cfg.lr, max(warm, 1), max(num_steps, warm + 1), optim_cfg.lr * optim_cfg.end_lr_frac
    )
  elif optim_cfg.decay == "constant":
    sched = optax.join_schedules(
      [optax.linear_schedule(0.0, optim_cfg.lr, max(warm, 1)), optax.constant_schedule(optim_cfg.lr)], [max(warm, 1)]
    )
  else:
    from dreamer4.errors import ConfigError

    raise ConfigError(f"--config.optim.decay={optim_cfg.decay!r} is unknown; use 'cosine' or 'constant'")
  # Decay matrices only; norms scales and biases stay undecayed.
  mask = lambda params: jax.tree.map(lambda x: x.ndim >= 2, params)
  parts = []
  if optim_cfg.grad_clip > 0:
    parts.append(optax.clip_by_global_norm(optim_cfg.grad_clip))
  parts.append(
    optax.adamw(
      sched, b1=optim_cfg.b1, b2=optim_cfg.b2, eps=optim_cfg.eps, weight_decay=optim_cfg.weight_decay, mask=mask
    )
  )
  return optax.chain(*parts)


def init_state(params, tx: optax.GradientTransformation, aux) -> dict:
  return dict(
    step=jnp.zeros((), jnp.int32),
    params=params,
    opt_state=tx.init(params),
    aux=aux,
    nonfinite=jnp.zeros((), jnp.int32),
    skipped=jnp.zeros((), jnp.int32),
  )


def state_shardings(abstract_state: dict, param_shardings, tx: optax.GradientTransformation, mesh: Mesh):
  """Shardings for the whole state: params by rule, Adam moments like their params, rest replicated."""
  rep = shd.replicated(mesh)
  opt_sh = optax.tree_map_params(
    tx, lambda _, s: s, abstract_state["opt_state"], param_shardings, transform_non_params=lambda _: rep
  )
  out = {k: jax.tree.map(lambda _: rep, v) for k, v in abstract_state.items()}
  out["params"] = param_shardings
  out["opt_state"] = opt_sh
  return out


def make_train_step(loss_fn: Callable, tx: optax.GradientTransformation) -> Callable:
  """Generic step: grads of `loss_fn(params, aux, batch, rng, frozen) -> (loss, (aux, metrics))`.

  `frozen` holds constant inputs (LPIPS weights, a frozen tokenizer): they are arguments
  of the jitted step, never closed-over constants (XLA would constant-fold them).

  A step whose loss or gradient norm is not finite leaves params, optimiser state and aux
  untouched and counts itself in `nonfinite` (consecutive) and `skipped` (total); the
  trainer stops after too many in a row, so NaN/Inf never reaches a checkpoint.
  """

  def step(state, batch, rng, frozen):
    (loss, (aux, metrics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state["params"], state["aux"], batch, rng, frozen
    )
    gnorm = optax.global_norm(grads)
    ok = jnp.isfinite(loss) & jnp.isfinite(gnorm)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)
    new_state = dict(
      step=state["step"] + ok.astype(jnp.int32),
      params=keep(params, state["params"]),
      opt_state=keep(opt_state, state["opt_state"]),
      aux=keep(aux, state["aux"]),
      nonfinite=jnp.where(ok, 0, state["nonfinite"] + 1).astype(jnp.int32),
      skipped=state["skipped"] + (~ok).astype(jnp.int32),
    )
    metrics = dict(metrics, loss=loss, grad_norm=gnorm, step_ok=ok.astype(jnp.float32))
    return new_state, metrics

  return step


def to_abstract(tree, shardings):
  """ShapeDtypeStructs carrying `shardings` (restore targets)."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


class TrainStep:
  """One model's train step on a mesh: optimiser, state shardings, and the jitted step.

  The trainer, --dry_run, the benchmarks and the tests all build their step here. The step
  (`make_train_step` of `loss_fn`) folds the iteration count into `key` (a resumed run draws
  the same randomness), donates the state and commits its outputs to the state's shardings.
  Each input signature (tree, shapes, dtypes, shardings) is lowered and compiled once, ahead
  of time (`jax.stages`), and that executable runs every later call; `compiles` counts them.

  Attributes:
    tx: the optimiser (`make_optimizer`).
    init_fn: rng -> a fresh state (traceable).
    abstract: the state's ShapeDtypeStructs.
    param_shardings, shardings: of the params and of the whole state.
    replicated: the mesh's replicated sharding (metrics, keys, frozen inputs).
  """

  def __init__(
    self, model_def: ModelDef, loss_fn: Callable, init_aux: Callable[[], Any], optim_cfg, num_steps: int, mesh: Mesh
  ):
    self.mesh = mesh
    self.tx = make_optimizer(optim_cfg, num_steps)
    self.init_fn = lambda rng: init_state(model_def.init_params(rng), self.tx, init_aux())
    self.abstract = jax.eval_shape(self.init_fn, jax.random.key(0))  # traced only: nothing is materialised
    self.param_shardings = model_def.param_shardings(mesh)
    self.shardings = state_shardings(self.abstract, self.param_shardings, self.tx, mesh)
    self.replicated = shd.replicated(mesh)
    core = make_train_step(loss_fn, self.tx)

    def train_step(state, batch, key, frozen):
      return core(state, batch, jax.random.fold_in(key, state["step"] + state["skipped"]), frozen)

    self._step = AotJit(train_step, out_shardings=(self.shardings, self.replicated), donate_argnums=(0,))

  @property
  def compiles(self) -> int:
    """Executables built so far: one per input signature."""
    return self._step.compiles

  def abstract_state(self):
    """The state's ShapeDtypeStructs on its shardings (restore targets, lowering inputs)."""
    return to_abstract(self.abstract, self.shardings)

  def init(self, rng):
    """A fresh state, built directly on its shardings."""
    with jax.set_mesh(self.mesh):
      return jax.jit(self.init_fn, out_shardings=self.shardings)(rng)

  def lower(self, state, batch, key, frozen) -> jax.stages.Lowered:
    """The step lowered for these inputs (arrays or ShapeDtypeStructs with shardings); not counted."""
    with jax.set_mesh(self.mesh):
      return self._step.lower(state, batch, key, frozen)

  def compile(self, state, batch, key, frozen) -> jax.stages.Compiled:
    """The executable for these inputs' signature, lowered and compiled on first use."""
    with jax.set_mesh(self.mesh):
      return self._step.compile(state, batch, key, frozen)

  def __call__(self, state, batch, key, frozen):
    """(new state, metrics); the input state is donated."""
    return self.compile(state, batch, key, frozen)(state, batch, key, frozen)
