"""Mesh construction and the mapping of logical axis names to mesh axes.

Parameters carry logical names ("embed", "mlp", ...) through `nnx.with_partitioning`;
`configs.common.LOGICAL_AXIS_RULES` maps them to the mesh axes ("data", "fsdp", "tensor").
Activations carry names from the same table through `constrain` (the residual stream,
attention and MLP activations of `dreamer4.models.transformer`), so FSDP and tensor
parallelism shard them as well; the data's batch axes are the table's "batch" rule.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from configs import common
from dreamer4.errors import ConfigError


def rule_axes(name: str, rules=common.LOGICAL_AXIS_RULES) -> tuple[str, ...]:
  """The mesh axes that the rule table maps logical axis `name` to; () when replicated."""
  axes = dict(rules).get(name)
  if axes is None:
    return ()
  return (axes,) if isinstance(axes, str) else tuple(axes)


# Mesh axes of every batch dimension (data and activations): read from the rule table, so
# the data, the activation constraints and the batch checks below cannot disagree.
BATCH_AXES = rule_axes("batch")


def resolve_mesh_shape(mesh_cfg, num_devices: int) -> tuple[int, int, int]:
  """Resolves `config.mesh` to a concrete (data, fsdp, tensor) shape for `num_devices`."""
  if mesh_cfg.shape:
    shape = tuple(int(s) for s in mesh_cfg.shape)
    where = f"--config.mesh.shape={tuple(mesh_cfg.shape)}"
  else:
    if mesh_cfg.preset not in common.MESH_PRESETS:
      raise ConfigError(
        f"--config.mesh.preset={mesh_cfg.preset!r} is unknown; choose one of {', '.join(common.MESH_PRESETS)}"
      )
    shape = common.MESH_PRESETS[mesh_cfg.preset]
    where = f"--config.mesh.preset={mesh_cfg.preset}"
  if len(shape) != len(common.MESH_AXES):
    raise ConfigError(f"{where} must have {len(common.MESH_AXES)} entries {common.MESH_AXES}")
  if shape.count(-1) > 1 or any(s == 0 or s < -1 for s in shape):
    raise ConfigError(f"{where}: use positive sizes and at most one -1")
  fixed = math.prod(s for s in shape if s != -1)
  if num_devices % fixed:
    raise ConfigError(
      f"{where} needs a multiple of {fixed} devices but {num_devices} are present; "
      f"set --config.mesh.shape so its product divides {num_devices}"
    )
  shape = tuple(num_devices // fixed if s == -1 else s for s in shape)
  if math.prod(shape) != num_devices:
    raise ConfigError(
      f"{where} uses {math.prod(shape)} devices but {num_devices} are present; "
      f"make the product equal {num_devices} (or use -1 for one axis)"
    )
  return shape  # type: ignore[return-value]


def make_mesh(mesh_cfg, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """Builds the ("data", "fsdp", "tensor") mesh with Auto axis types (jax.make_mesh defaults to Explicit)."""
  devices = list(devices if devices is not None else jax.devices())
  n = int(mesh_cfg.get("num_devices", 0) or 0)  # mesh configs built by hand (tests, play) may leave it out
  if n:
    if jax.process_count() > 1 or n > len(devices):
      raise ConfigError(
        f"--config.mesh.num_devices={n} needs a single process with at least {n} devices "
        f"({len(devices)} here, {jax.process_count()} processes); use 0 for all devices"
      )
    devices = devices[:n]
  shape = resolve_mesh_shape(mesh_cfg, len(devices))
  axis_types = (AxisType.Auto,) * len(shape)
  if devices == list(jax.devices()):
    return jax.make_mesh(shape, common.MESH_AXES, axis_types=axis_types)
  return Mesh(np.asarray(devices).reshape(shape), common.MESH_AXES, axis_types=axis_types)


def _axis_size(mesh: Mesh, axes) -> int:
  if axes is None:
    return 1
  if isinstance(axes, str):
    axes = (axes,)
  return math.prod(mesh.shape[a] for a in axes)


def logical_to_mesh_spec(
  logical: Sequence[Any], shape: Sequence[int], mesh: Mesh, rules=common.LOGICAL_AXIS_RULES
) -> P:
  """Maps one array's logical names to a PartitionSpec on `mesh` (a Mesh or an AbstractMesh).

  A dimension that its mesh axes do not divide drops trailing axes until they do, down to
  replicated (so a model with, say, one KV head still runs on a mesh with a tensor axis,
  and a batch of 2 on a 2 x 2 data x fsdp mesh splits over "data" alone); a mesh axis is
  used once, by the first dimension that claims it.
  """
  table = dict(rules)
  used: set[str] = set()
  out = []
  for name, size in zip(tuple(logical) + (None,) * (len(shape) - len(logical)), shape):
    axes = table.get(name) if name is not None else None
    if axes is not None:
      axes_t = (axes,) if isinstance(axes, str) else tuple(axes)
      axes_t = tuple(a for a in axes_t if a not in used and mesh.shape.get(a, 1) > 1)
      while axes_t and size % _axis_size(mesh, axes_t):
        axes_t = axes_t[:-1]
      if axes_t:
        used.update(axes_t)
        out.append(axes_t[0] if len(axes_t) == 1 else axes_t)
        continue
    out.append(None)
  return P(*out)


def constrain(x, logical: Sequence[str | None]):
  """`x` constrained to the sharding that its logical axis names map to on the current mesh.

  The mesh is the one `jax.set_mesh` put in context (the trainer, --dry_run, the
  benchmarks and the tests trace every step inside it). Without one, or when no name maps
  to a mesh axis of size > 1, `x` comes back untouched: unit tests build and run models
  without a mesh, and an all-replicated constraint would only take a choice away from XLA.

  Args:
    x: An activation.
    logical: Logical axis names of its leading dimensions (missing trailing ones: None).
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return x
  spec = logical_to_mesh_spec(logical, x.shape, mesh)
  if all(s is None for s in spec):
    return x
  return jax.lax.with_sharding_constraint(x, spec)


def tree_shardings(abstract_tree, logical_specs, mesh: Mesh):
  """NamedShardings for a tree of arrays, given a matching tree of logical PartitionSpecs."""
  return jax.tree.map(
    lambda x, spec: NamedSharding(mesh, logical_to_mesh_spec(tuple(spec), x.shape, mesh)),
    abstract_tree,
    logical_specs,
    is_leaf=lambda s: isinstance(s, P),
  )


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
  """Leading (batch) dimension over ("data", "fsdp"), the rest replicated."""
  return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


def check_batch_divides(global_batch: int, mesh: Mesh, setting: str = "--config.train.batch_size"):
  """The global batch must split evenly over the data axes and over the processes."""
  n = _axis_size(mesh, BATCH_AXES)
  if global_batch % n:
    raise ConfigError(
      f"{setting}={global_batch} does not divide over the {n} data-parallel devices "
      f"(mesh data x fsdp); use a multiple of {n}"
    )
  if global_batch % jax.process_count():
    raise ConfigError(
      f"{setting}={global_batch} does not divide over {jax.process_count()} processes; "
      f"use a multiple of {jax.process_count()}"
    )
