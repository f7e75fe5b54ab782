"""Tests for the shortcut forcing objective."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

from data_pipelines.envs.base import Action, ActionComponent, ActionSpec
from dreamer4.models.dynamics import Dynamics, make_training_fn
from dreamer4.objectives import shortcut as sc


def test_division_free_form_equals_velocity_form():
  k_max = 64
  B, T, N, L = 32, 8, 3, 5
  levels = sc.sample_tau_d(jax.random.key(0), B, T, k_max)
  # Add the extreme grid points explicitly (tau = 0 and tau = 1 - d_min).
  tau = levels["tau_BT"].at[0, 0].set(0.0).at[0, 1].set(63 / 64)
  keys = jax.random.split(jax.random.key(1), 4)
  z1_hat, z_tilde, b1, b2 = (3.0 * jax.random.normal(k, (B, T, N, L)) for k in keys)

  @jax.jit
  def both(z1_hat, z_tilde, b1, b2, tau):
    forms = (sc.bootstrap_frame_loss, sc.bootstrap_target_velocity_form)
    values = [f(z1_hat, z_tilde, b1, b2, tau) for f in forms]
    # Gradients w.r.t. the prediction (the target is under sg in both forms).
    grads = [jax.grad(lambda x, f=f: f(x, z_tilde, b1, b2, tau).sum())(z1_hat) for f in forms]
    return values, grads

  (division_free, velocity), (g1, g2) = both(z1_hat, z_tilde, b1, b2, tau)
  assert division_free.shape == (B, T)
  np.testing.assert_allclose(np.asarray(division_free), np.asarray(velocity), rtol=2e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(g1), np.asarray(g2), rtol=2e-4, atol=1e-6)


def test_sample_tau_d_follows_eq4():
  k_max = 64
  out = jax.jit(sc.sample_tau_d, static_argnums=(1, 2, 3))(jax.random.key(3), 2048, 8, k_max)
  tau_idx, e = np.asarray(out["tau_idx_BT"]), np.asarray(out["d_idx_BT"])
  tau, d = np.asarray(out["tau_BT"]), np.asarray(out["d_BT"])
  assert tau_idx.dtype == np.int32 and e.dtype == np.int32
  assert set(np.unique(e)) == set(range(7))
  K = 2**e
  np.testing.assert_array_equal(d, 1.0 / K)  # d in {1, 1/2, ..., 1/64}
  # tau = j / K with integer j < K, stored on the k_max grid.
  assert np.all(tau_idx % (k_max // K) == 0)
  j = tau_idx // (k_max // K)
  assert np.all((0 <= j) & (j < K))
  np.testing.assert_array_equal(tau, j / K)
  np.testing.assert_array_equal(tau, tau_idx / k_max)
  assert np.all(tau[d == 1.0] == 0.0)  # a full step starts from pure noise
  assert np.all(tau <= 1.0 - d)
  # e ~ U{0..6}: 16384 draws, each frequency near 1/7 (std ~0.003).
  freq = np.bincount(e.ravel(), minlength=7) / e.size
  np.testing.assert_allclose(freq, 1 / 7, atol=0.015)
  # Within K = 64, j is uniform: its mean is near 31.5.
  assert abs(j[K == 64].mean() - 31.5) < 1.5


def _const_apply(target):
  """A "model" that always predicts `target` (rows follow the input batch)."""

  def apply_fn(z, tau_idx, d_idx, independent_B):
    return jnp.broadcast_to(target[: z.shape[0]], z.shape)

  return apply_fn


def test_ramp_weights_and_exact_targets():
  k_max, B, T = 16, 8, 6
  z1 = jax.random.normal(jax.random.key(0), (B, T, 2, 3))
  c = 0.5
  loss_fn = jax.jit(
    functools.partial(sc.shortcut_loss, _const_apply(z1 + c), k_max=k_max, bootstrap_fraction=0.5, return_frames=True),
    static_argnames="ramp",
  )
  loss, m = loss_fn(z1, jax.random.key(1), ramp=True)
  f = {k: np.asarray(v) for k, v in m["frames"].items()}
  np.testing.assert_allclose(f["weight_BT"], 0.9 * f["tau_BT"] + 0.1, rtol=1e-6)
  np.testing.assert_array_equal(f["tau_BT"], f["tau_idx_BT"] / k_max)
  # Flow frames: ||(z1 + c) - z1||^2 = c^2, times the ramp weight.
  flow = f["is_flow_BT"]
  np.testing.assert_allclose(f["loss_BT"][flow], (0.9 * f["tau_BT"][flow] + 0.1) * c * c, rtol=1e-5)
  # Bootstrap frames: a constant predictor walks a straight line to its own
  # prediction, so two half steps land where one full step does: zero loss.
  assert (~flow).sum() > 0
  np.testing.assert_allclose(f["loss_BT"][~flow], 0.0, atol=1e-5)
  # Rows 4..7 are flow-only rows with d = d_min.
  assert np.all(f["d_idx_BT"][4:] == 4) and np.all(flow[4:])
  np.testing.assert_allclose(float(loss), f["loss_BT"].mean(), rtol=1e-6)
  np.testing.assert_allclose(float(m["flow_term"] + m["bootstrap_term"]), float(loss), rtol=1e-6)
  assert float(m["flow_frames"]) + float(m["bootstrap_frames"]) == B * T
  np.testing.assert_allclose(float(m["flow_mse"]), c * c, rtol=1e-5)
  assert float(m["bootstrap_rows"]) == 4 and float(m["independent_rows"]) == 2
  assert int(f["independent_B"].sum()) == 2
  _, m_flat = loss_fn(z1, jax.random.key(1), ramp=False)
  np.testing.assert_array_equal(np.asarray(m_flat["frames"]["weight_BT"]), 1.0)
  np.testing.assert_allclose(float(m_flat["flow_loss"]), c * c, rtol=1e-5)


def test_bootstrap_passes_advance_the_whole_sequence():
  k_max, B, T = 8, 4, 8
  z1 = jax.random.normal(jax.random.key(0), (B, T, 2, 2))
  target = z1 + 1.0
  calls = []

  def apply_fn(z, tau_idx, d_idx, independent_B):
    calls.append(tuple(np.asarray(a) for a in (z, tau_idx, d_idx, independent_B)))
    return jnp.broadcast_to(target[: z.shape[0]], z.shape)

  # Called eagerly, so the recorder sees concrete arrays.
  sc.shortcut_loss(apply_fn, z1, jax.random.key(5), k_max=k_max, bootstrap_fraction=0.5, independent_fraction=0.25)
  assert [c[0].shape[0] for c in calls] == [4, 2, 2]  # main pass, two half-step passes
  (z_t, tau_idx, d_idx, ind), (z_a, tau_a, d_a, ind_a), (z_b, tau_b, d_b, ind_b) = calls
  assert ind.sum() == 1
  np.testing.assert_array_equal(ind_a, ind[:2])
  np.testing.assert_array_equal(ind_b, ind[:2])
  boot = d_idx[:2] < 3  # d > d_min
  assert boot.any() and (~boot).any()
  # Pass 1: same inputs and level, half the step (d index + 1) on bootstrap frames.
  np.testing.assert_array_equal(z_a, z_t[:2])
  np.testing.assert_array_equal(tau_a, tau_idx[:2])
  np.testing.assert_array_equal(d_a, np.where(boot, d_idx[:2] + 1, d_idx[:2]))
  # Pass 2: bootstrap frames moved by half a step to tau + d/2; the rest keep z~.
  half = k_max >> (d_idx[:2] + 1)
  np.testing.assert_array_equal(tau_b, np.where(boot, tau_idx[:2] + half, tau_idx[:2]))
  np.testing.assert_array_equal(d_b, d_a)
  tau, d = tau_idx[:2] / k_max, 2.0 ** -d_idx[:2]
  step = (0.5 * d / (1 - tau))[..., None, None]
  expected = z_t[:2] + step * (np.asarray(target[:2]) - z_t[:2])
  np.testing.assert_allclose(z_b[boot], expected[boot], rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(z_b[~boot], z_t[:2][~boot])
  # Frames of the input are corrupted per frame to their own level.
  tau_all = (tau_idx / k_max)[..., None, None]
  noise = (z_t - tau_all * np.asarray(z1)) / (1 - tau_all)
  assert abs(noise.std() - 1.0) < 0.2

  calls.clear()
  sc.shortcut_loss(apply_fn, z1, jax.random.key(5), k_max=k_max, bootstrap_fraction=0.0)
  assert len(calls) == 1 and np.all(calls[0][2] == 3)  # flow only: d = d_min everywhere


SPEC = ActionSpec((ActionComponent("move", "discrete", 4), ActionComponent("keys", "binary", 2)))


def _model():
  cfg = ml_collections.ConfigDict(
    dict(
      group=2,
      num_registers=1,
      k_max=8,
      width=32,
      depth=2,
      num_heads=2,
      num_kv_heads=1,
      head_dim=16,
      mlp_dim=64,
      time_every=2,
      softcap=50.0,
      context=0,
      dtype="float32",
      remat=False,
      spatial_pos=False,
      scan_layers=False,
      remat_policy="nothing",
      attention="dense",
    )
  )
  with nnx.use_eager_sharding(False):
    return Dynamics.from_config(cfg, 4, 4, SPEC, nnx.Rngs(0))


GRAD_NAMES = (
  "transformer",
  "latent_in_kernel",
  "readout_kernel",
  "tau_embed",
  "d_embed",
  "action_table",
  "action_base",
)


def _global_norm(tree):
  return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree)))


def test_real_model_loss_gradients_and_short_fit():
  model = _model()
  with nnx.use_eager_sharding(False):
    opt = nnx.Optimizer(model, optax.adam(3e-3), wrt=nnx.Param)
  B, T = 4, 4
  keys = jax.random.split(jax.random.key(0), 3)
  z1 = jnp.tanh(jax.random.normal(keys[0], (B, T, 4, 4)))
  disc = jnp.concatenate(
    [jax.random.randint(keys[1], (B, T, 1), 0, 4), jax.random.randint(keys[2], (B, T, 2), 0, 2)], axis=-1
  )
  labelled = jnp.ones((B, T), bool).at[:, 0].set(False)

  @nnx.jit
  def train_step(model, opt, rng):
    def loss_fn(model):
      apply_fn = make_training_fn(model, Action.from_window({"actions_discrete": disc, "action_labelled": labelled}))
      return sc.shortcut_loss(apply_fn, z1, rng, k_max=8, bootstrap_fraction=0.5)

    (loss, metrics), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
    opt.update(model, grads)
    return loss, metrics, {name: _global_norm(grads[name]) for name in GRAD_NAMES}

  # A fixed batch and a fixed key (same noise and levels every step): the reported
  # losses are those of the parameters before each update.
  rng = jax.random.key(1)
  loss, first, grad_norms = train_step(model, opt, rng)
  assert np.isfinite(float(loss)) and float(loss) > 0
  assert float(first["bootstrap_rows"]) == 2 and float(first["bootstrap_frames"]) > 0
  for name, g in grad_norms.items():
    assert np.isfinite(float(g)) and float(g) > 0, name
  for _ in range(9):
    loss, last, _ = train_step(model, opt, rng)
  # Measured: flow loss 0.32 -> 0.09 after 9 Adam(3e-3) steps.
  assert float(last["flow_loss"]) < 0.7 * float(first["flow_loss"]), (first, last)
  assert float(loss) < float(first["loss"])


def test_row_weights_give_the_weighted_mean_over_rows():
  """row_weight_B (phase 2's uniform rows): the weighted mean of the per-frame losses."""
  B, T, N, L = 4, 3, 2, 4
  z1 = jax.random.normal(jax.random.key(1), (B, T, N, L))
  w = jnp.asarray([1.0, 0.0, 1.0, 0.0])

  def apply_fn(z, tau_idx, d_idx, ind):
    return 0.5 * z + 0.01 * tau_idx[..., None, None] - 0.02 * d_idx[..., None, None]

  kw = dict(k_max=8, bootstrap_fraction=0.5, independent_fraction=0.0, return_frames=True)
  plain, m = sc.shortcut_loss(apply_fn, z1, jax.random.key(2), **kw)
  weighted, mw = sc.shortcut_loss(apply_fn, z1, jax.random.key(2), row_weight_B=w, **kw)
  loss_BT = np.asarray(m["frames"]["loss_BT"])
  np.testing.assert_allclose(float(plain), loss_BT.mean(), rtol=1e-6)
  np.testing.assert_allclose(float(weighted), loss_BT[[0, 2]].mean(), rtol=1e-6)
  ones, _ = sc.shortcut_loss(apply_fn, z1, jax.random.key(2), row_weight_B=jnp.ones((B,)), **kw)
  np.testing.assert_allclose(float(ones), float(plain), rtol=1e-6)


def test_padding_frames_never_reach_the_loss():
  """valid_T False (padding past an episode's end): whatever those frames hold, the loss and
  its gradient are unchanged (the model is block-causal and the frames have weight 0), and
  the loss is the mean over the valid frames only."""
  model = _model()
  B, T = 4, 5
  keys = jax.random.split(jax.random.key(0), 3)
  z1 = jnp.tanh(jax.random.normal(keys[0], (B, T, 4, 4)))
  disc = jnp.concatenate(
    [jax.random.randint(keys[1], (B, T, 1), 0, 4), jax.random.randint(keys[2], (B, T, 2), 0, 2)], axis=-1
  )
  labelled = jnp.ones((B, T), bool).at[:, 0].set(False)
  valid = jnp.asarray([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 0]], bool)
  graphdef, params = nnx.split(model)

  @jax.jit
  def loss_and_grad(params, z, disc):
    def f(params):
      m = nnx.merge(graphdef, params)
      loss, metrics = sc.shortcut_loss(
        make_training_fn(m, Action.from_window({"actions_discrete": disc, "action_labelled": labelled})),
        z,
        jax.random.key(3),
        k_max=8,
        bootstrap_fraction=0.5,
        independent_fraction=0.0,
        valid_BT=valid,
        return_frames=True,
      )
      return loss, metrics

    (loss, metrics), g = jax.value_and_grad(f, has_aux=True)(params)
    return loss, metrics, g

  loss, metrics, grads = loss_and_grad(params, z1, disc)
  loss_BT = np.asarray(metrics["frames"]["loss_BT"])
  np.testing.assert_allclose(float(loss), loss_BT[np.asarray(valid)].mean(), rtol=1e-5)
  assert float(metrics["flow_frames"] + metrics["bootstrap_frames"]) == int(valid.sum())
  junk = jnp.where(valid[..., None, None], z1, 5.0)
  junk_disc = jnp.where(valid[..., None], disc, 0)
  loss2, _, grads2 = loss_and_grad(params, junk, junk_disc)
  np.testing.assert_allclose(float(loss2), float(loss), rtol=1e-5, atol=1e-7)
  for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(grads2)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("processes", [1, 2, 4])
def test_bootstrap_rows_are_the_configured_share_of_the_dynamics_rows(processes):
  """Phase 2's global batch stacks each process's [uniform | relevant] block. The dynamics loss
  (and so its bootstrap rows) must fall on the uniform rows only, at bootstrap_fraction of them."""
  from dreamer4.phases.agent import dynamics_row_count, dynamics_rows

  local, frac, boot = 8, 0.5, 0.25
  relevant_B = jnp.asarray(np.tile(np.r_[np.zeros(4, bool), np.ones(4, bool)], processes))
  B = local * processes
  count = dynamics_row_count(frac, B, processes)
  assert count == 4 * processes
  rows = np.asarray(dynamics_rows(relevant_B, count))
  assert not np.asarray(relevant_B)[rows].any() and len(set(rows)) == count
  np.testing.assert_array_equal(rows, np.sort(rows))  # batch order kept
  z1 = jax.random.normal(jax.random.key(1), (B, 3, 2, 4))

  def apply_fn(z, tau_idx, d_idx, ind):
    return 0.5 * z + 0.01 * tau_idx[..., None, None] - 0.02 * d_idx[..., None, None]

  _, m = sc.shortcut_loss(
    apply_fn,
    z1[rows],
    jax.random.key(2),
    k_max=8,
    bootstrap_fraction=boot,
    independent_fraction=0.0,
    return_frames=True,
  )
  assert float(m["bootstrap_rows"]) == round(boot * count)
  # The bootstrap rows are the first rows of the gathered batch: all uniform rows.
  d_idx = np.asarray(m["frames"]["d_idx_BT"])
  flow_only = (d_idx == 3).all(axis=1)
  assert flow_only[round(boot * count) :].all()
