"""Activations sharded by logical name: the rule table's "batch" rule, the divisibility fallback,
and constraints that vanish without a mesh. (The sharded-equals-single-device train step is
tests/training/test_dynamics_sharded.py.)"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import PartitionSpec as P

from configs import common
from dreamer4 import sharding as shd
from dreamer4.models import transformer as tr


def _mesh(shape=(2, 2, 2)):
  return shd.make_mesh(
    ml_collections.ConfigDict({"preset": "data", "shape": shape}), jax.devices()[: int(np.prod(shape))]
  )


def test_batch_axes_come_from_the_rule_table():
  assert shd.BATCH_AXES == tuple(dict(common.LOGICAL_AXIS_RULES)["batch"]) == ("data", "fsdp")
  assert shd.rule_axes("embed") == ("fsdp",) and shd.rule_axes("head_dim") == () and shd.rule_axes("nope") == ()
  rules = (("batch", "data"),)
  assert shd.rule_axes("batch", rules) == ("data",)


def test_logical_spec_falls_back_axis_by_axis():
  mesh = _mesh()
  # The whole (data, fsdp) product divides 8; 2 takes "data" alone; 3 nothing.
  assert shd.logical_to_mesh_spec(("batch", None), (8, 5), mesh) == P(("data", "fsdp"), None)
  assert shd.logical_to_mesh_spec(("batch", None), (2, 5), mesh) == P("data", None)
  assert shd.logical_to_mesh_spec(("batch",), (3,), mesh) == P(None)
  # A mesh axis serves one dimension: "embed" (fsdp) is free only when "batch" did not take it.
  assert shd.logical_to_mesh_spec(("batch", "embed"), (8, 4), mesh) == P(("data", "fsdp"), None)
  assert shd.logical_to_mesh_spec(("batch", "embed"), (2, 4), mesh) == P("data", "fsdp")
  # An AbstractMesh (what a traced step sees) maps alike.
  assert shd.logical_to_mesh_spec(("batch", "heads"), (8, 4), mesh.abstract_mesh) == P(("data", "fsdp"), "tensor")


def test_constraints_are_no_ops_without_a_mesh_and_shard_with_one():
  x = jnp.arange(8 * 4 * 6, dtype=jnp.float32).reshape(8, 4, 6)
  assert shd.constrain(x, ("batch", None, "heads")) is x  # no mesh in context
  f = jax.jit(lambda x: tr.constrain(x * 2.0, "heads") + 1.0)
  np.testing.assert_array_equal(f(x), x * 2 + 1)
  assert "sharding_constraint" not in f.lower(x).as_text()
  mesh = _mesh()
  with jax.set_mesh(mesh):
    hlo = f.lower(x).as_text()
    np.testing.assert_array_equal(f(x), x * 2 + 1)
  assert '[{"data", "fsdp"}, {}, {"tensor"}]' in hlo
  with jax.set_mesh(_mesh((1, 1, 1))):  # a one-device mesh: nothing to constrain
    assert "sharding_constraint" not in f.lower(x).as_text()
