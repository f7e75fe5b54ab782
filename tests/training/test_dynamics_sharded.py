"""A sharded dynamics (shortcut forcing) step equals the single-device step.

The (2, 2, 2) data x fsdp x tensor mesh shards the parameters (FSDP on "embed", tensor
parallelism on heads and MLP) and, through the same rule table, the activations: the
residual stream on "batch", attention on "heads"/"kv_heads", the MLP hidden on "mlp".
"""

import re

import jax
import ml_collections
import numpy as np
import pytest
from flax import nnx

from configs import dynamics as dynamics_config
from data_pipelines.envs.base import Action, ActionComponent, ActionSpec
from dreamer4 import sharding as shd
from dreamer4.models import transformer as tr
from dreamer4.models.dynamics import Dynamics, make_training_fn
from dreamer4.objectives.shortcut import shortcut_loss
from dreamer4.training import state as st


def _constraints(hlo: str) -> set[str]:
  """The distinct shardings of the lowered program's sharding constraints (shardy's syntax)."""
  return set(re.findall(r"sharding_constraint %\S+ <@mesh, (\[.*?\])>", hlo))


# "chunked" with 2-query chunks: its lax.map over chunks runs on the sharded activations.
@pytest.mark.parametrize("attention", ["dense", "chunked"])
def test_sharded_dynamics_step_matches_single_device(attention, monkeypatch):
  monkeypatch.setattr(tr, "ATTENTION_CHUNK", 2)
  cfg = dynamics_config.get_config("tiny")
  cfg.model.num_heads = 4
  cfg.model.num_kv_heads = 2  # GQA with kv heads split over the tensor axis
  cfg.model.attention = attention
  spec = ActionSpec((ActionComponent("move", "discrete", 5),))
  mdef = st.ModelDef.build(lambda rng: Dynamics.from_config(cfg.model, 4, 8, spec, nnx.Rngs(rng)))
  rng = np.random.default_rng(0)
  B, T = 8, cfg.data.window
  batch_np = {
    "latents": np.tanh(rng.normal(size=(B, T, 4, 8))).astype(np.float32),
    "actions_discrete": rng.integers(0, 5, size=(B, T, 1)).astype(np.int32),
    "action_labelled": rng.random((B, T)) > 0.2,
  }

  def loss_fn(params, batch):
    apply_fn = make_training_fn(mdef.merge(params), Action.from_window(batch))
    loss, _ = shortcut_loss(
      apply_fn,
      batch["latents"],
      jax.random.key(3),
      k_max=cfg.model.k_max,
      bootstrap_fraction=0.5,
      independent_fraction=0.25,
    )
    return loss

  results = {}
  for name, shape, n in (("single", (1, 1, 1), 1), ("sharded", (2, 2, 2), 8)):
    mesh = shd.make_mesh(ml_collections.ConfigDict({"preset": "data", "shape": shape}), jax.devices()[:n])
    shardings = mdef.param_shardings(mesh)
    with jax.set_mesh(mesh):
      params = jax.jit(mdef.init_params, out_shardings=shardings)(jax.random.key(0))
      batch = {k: jax.device_put(v, shd.batch_sharding(mesh, v.ndim)) for k, v in batch_np.items()}
      lowered = jax.jit(jax.value_and_grad(loss_fn)).lower(params, batch)
      loss, grads = lowered.compile()(params, batch)
    constraints = _constraints(lowered.as_text())
    if name == "sharded":
      assert any(any(a is not None for a in s.spec) for s in jax.tree.leaves(shardings))
      # Activations are constrained by name: the batch over both data axes, and heads, kv
      # heads and the MLP hidden over "tensor" (its last sharded axis; head_dim follows).
      on_batch = {c for c in constraints if c.startswith('[{"data", "fsdp"}')}
      assert any(c.endswith("{}, {}, {}]") for c in on_batch), constraints  # residual [B, T, S, D]
      assert any(c.endswith('{"tensor"}, {}]') for c in on_batch), constraints  # q, k, v [B, T, S, H, K]
      assert any(c.endswith('{"tensor"}]') for c in on_batch), constraints  # MLP hidden [B, T, S, M]
    else:
      assert not constraints  # a one-device mesh: every constraint is a no-op and is left out
    results[name] = jax.device_get((loss, grads))
  (l1, g1), (l8, g8) = results["single"], results["sharded"]
  np.testing.assert_allclose(l1, l8, rtol=1e-5)
  gmax = max(float(np.abs(g).max()) for g in jax.tree.leaves(g1))
  gdiff = max(float(np.abs(a - b).max()) for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g8)))
  assert gmax > 0 and gdiff <= 1e-4 * gmax, (gdiff, gmax)
