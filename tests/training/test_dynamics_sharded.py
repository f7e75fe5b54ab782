"""A sharded dynamics (shortcut forcing) step equals the single-device step."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from configs import dynamics as dynamics_config
from data_pipelines.envs.base import ActionComponent, ActionSpec
from dreamer4 import sharding as shd
from dreamer4.models.dynamics import Dynamics, make_training_fn
from dreamer4.objectives.shortcut import shortcut_loss
from dreamer4.training import state as st


def test_sharded_dynamics_step_matches_single_device():
  cfg = dynamics_config.get_config("tiny")
  cfg.model.num_heads = 4
  cfg.model.num_kv_heads = 2  # GQA with kv heads split over the tensor axis
  spec = ActionSpec((ActionComponent("move", "discrete", 5),))
  mdef = st.ModelDef.build(lambda rng: Dynamics.from_config(cfg.model, 4, 8, spec, nnx.Rngs(rng)))
  rng = np.random.default_rng(0)
  B, T = 8, cfg.data.window
  batch_np = {"latents": np.tanh(rng.normal(size=(B, T, 4, 8))).astype(np.float32),
              "actions_discrete": rng.integers(0, 5, size=(B, T, 1)).astype(np.int32),
              "action_labelled": rng.random((B, T)) > 0.2}

  def loss_fn(params, batch):
    apply_fn = make_training_fn(mdef.merge(params), batch["actions_discrete"], batch["action_labelled"])
    loss, _ = shortcut_loss(apply_fn, batch["latents"], jax.random.key(3), k_max=cfg.model.k_max,
                            bootstrap_fraction=0.5, independent_fraction=0.25)
    return loss

  results = {}
  for name, shape, n in (("single", (1, 1, 1), 1), ("sharded", (2, 2, 2), 8)):
    mesh = shd.make_mesh(ml_collections.ConfigDict({"preset": "data", "shape": shape}), jax.devices()[:n])
    shardings = mdef.param_shardings(mesh)
    with jax.set_mesh(mesh):
      params = jax.jit(mdef.init_params, out_shardings=shardings)(jax.random.key(0))
      batch = {k: jax.device_put(v, shd.batch_sharding(mesh, v.ndim)) for k, v in batch_np.items()}
      loss, grads = jax.jit(jax.value_and_grad(loss_fn))(params, batch)
    if name == "sharded":
      assert any(any(a is not None for a in s.spec) for s in jax.tree.leaves(shardings))
    results[name] = jax.device_get((loss, grads))
  (l1, g1), (l8, g8) = results["single"], results["sharded"]
  np.testing.assert_allclose(l1, l8, rtol=1e-5)
  gmax = max(float(np.abs(g).max()) for g in jax.tree.leaves(g1))
  gdiff = max(float(np.abs(a - b).max()) for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g8)))
  assert gmax > 0 and gdiff <= 1e-4 * gmax, (gdiff, gmax)
