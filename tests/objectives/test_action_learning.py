"""The dynamics model learns the action effect under shortcut forcing (the dot world).

One dot on a G x G grid; each frame's action (noop, up, down, left, right) moves it one
cell (clipped at the walls). Latent n of a frame is +1 on both channels where the dot is
and -1 elsewhere, so the next frame is a deterministic function of the last frame and
the action, and with shuffled actions the best guess spreads over the neighbours.

The probe is the inference condition of the sampler: clean history corrupted to the
context level, the last frame from pure noise (tau = 0). The model is trained with the
toy's shortcut-forcing settings from configs/dynamics.py, so a change there that stops
the toy model from learning actions fails here.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from configs import dynamics as dynamics_config
from data_pipelines.envs.base import Action, ActionComponent, ActionSpec
from dreamer4.models.dynamics import Dynamics, make_training_fn
from dreamer4.objectives.shortcut import shortcut_loss

GRID = 3
T = 4
BATCH = 16
STEPS = 1500
K_MAX = 16
CONTEXT_LEVEL = K_MAX - 2  # history at signal 1 - 2/16 ~ the sampler's 0.9
MOVES = np.array([[0, 0], [-1, 0], [1, 0], [0, -1], [0, 1]])
SPEC = ActionSpec((ActionComponent("move", "discrete", 5, ("noop", "up", "down", "left", "right")),))


def _dot_batch(rng: np.random.Generator, n: int):
  z = -np.ones((n, T, GRID * GRID, 2), np.float32)
  actions = rng.integers(0, 5, (n, T, 1)).astype(np.int32)
  pos = rng.integers(0, GRID, (n, 2))
  for t in range(T):
    if t:
      pos = np.clip(pos + MOVES[actions[:, t, 0]], 0, GRID - 1)
    z[np.arange(n), t, pos[:, 0] * GRID + pos[:, 1], :] = 1.0
  labelled = np.ones((n, T), bool)
  labelled[:, 0] = False  # the first frame's action is unknown, as in the store
  return jnp.asarray(z), jnp.asarray(actions), jnp.asarray(labelled)


def _model():
  cfg = dynamics_config.model_config("toy")
  cfg.update(
    dict(
      group=1,
      k_max=K_MAX,
      width=32,
      depth=2,
      num_heads=2,
      num_kv_heads=1,
      head_dim=16,
      mlp_dim=128,
      time_every=2,
      num_registers=1,
    )
  )
  with nnx.use_eager_sharding(False):
    return Dynamics.from_config(cfg, GRID * GRID, 2, SPEC, nnx.Rngs(0))


def test_toy_shortcut_settings_learn_the_action_effect():
  loss_cfg = dynamics_config.get_config("toy").loss
  model = _model()
  opt = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)

  @nnx.jit
  def train_step(model, opt, z, a, lab, key):
    def loss_fn(m):
      return shortcut_loss(
        make_training_fn(m, Action.from_window({"actions_discrete": a, "action_labelled": lab})),
        z,
        key,
        k_max=K_MAX,
        bootstrap_fraction=loss_cfg.bootstrap_fraction,
        independent_fraction=loss_cfg.independent_fraction,
        ramp=loss_cfg.ramp,
      )[0]

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    opt.update(model, grads)
    return loss

  @nnx.jit
  def probe(model, z, a, lab, key):
    tau_idx = jnp.full(z.shape[:2], CONTEXT_LEVEL, jnp.int32).at[:, -1].set(0)
    tau = tau_idx.astype(jnp.float32)[..., None, None] / K_MAX
    z_tilde = (1 - tau) * jax.random.normal(key, z.shape) + tau * z
    d_idx = jnp.full(z.shape[:2], int(np.log2(K_MAX)), jnp.int32)
    out = {}
    for name, acts in (("true", a), ("shuffled", jnp.roll(a, 1, axis=0))):
      window = {"actions_discrete": acts, "action_labelled": lab}
      pred = make_training_fn(model, Action.from_window(window))(z_tilde, tau_idx, d_idx)
      out[name] = jnp.mean(jnp.square(pred[:, -1] - z[:, -1]))
    return out

  rng = np.random.default_rng(0)
  held_out = _dot_batch(np.random.default_rng(123), 128)
  for i in range(STEPS):
    train_step(model, opt, *_dot_batch(rng, BATCH), jax.random.key(i))
  mse = {k: float(v) for k, v in probe(model, *held_out, jax.random.key(7)).items()}
  copy_last = float(jnp.mean(jnp.square(held_out[0][:, -1] - held_out[0][:, -2])))
  print(mse, "copy last frame", copy_last)
  # The model reads the history (beats copying the last frame) and the action: true
  # actions beat shuffled ones by a clear margin.
  assert mse["true"] < copy_last
  assert mse["true"] < 0.85 * mse["shuffled"], mse
