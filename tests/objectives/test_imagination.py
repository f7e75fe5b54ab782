"""Tests for lambda-returns, terminal masks, PMPO and the value loss [P §3.3, Eq 10–11]."""

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from data_pipelines.envs.base import Action, ActionComponent, ActionSpec
from dreamer4.models import heads
from dreamer4.objectives.imagination import lambda_returns, pmpo_loss, terminal_masks, value_loss


def test_lambda_returns_hand_example_with_terminal():
  # r_t, c_t belong to the step into frame t; frame 2 is terminal (c_2 = 0).
  r = jnp.array([[99.0, 1.0, 2.0, 3.0]])  # r_0 is unused
  v = jnp.array([[10.0, 20.0, 30.0, 40.0]])
  c = jnp.array([[0.0, 1.0, 0.0, 1.0]])  # c_0 is unused
  R = lambda_returns(r, v, c, gamma=0.9, lam=0.5)
  # R_3 = v_3 = 40
  # R_2 = r_3 + 0.9 * c_3 * (0.5 * v_3 + 0.5 * R_3) = 3 + 0.9 * 40 = 39
  # R_1 = r_2 + 0.9 * c_2 * (...)                     = 2 (terminal: no bootstrap)
  # R_0 = r_1 + 0.9 * c_1 * (0.5 * v_1 + 0.5 * R_1)  = 1 + 0.9 * (10 + 1) = 10.9
  np.testing.assert_allclose(R, [[10.9, 2.0, 39.0]], rtol=1e-6)


def test_terminal_masks_terminal_state_has_weight_zero():
  # r_t of the step into frame t (r_0 unused): frame 3 is terminal.
  r, c, w = terminal_masks(jnp.array([[0.0, 0.0, 0.0, 1.0, 0.0, 0.0]]), 0.5)
  np.testing.assert_array_equal(w, [[1, 1, 1, 0, 0, 0]])  # frame 3's decision and value do not count
  np.testing.assert_array_equal(c, [[1, 1, 1, 0, 0, 0]])  # continue 0 on the step into frame 3
  np.testing.assert_array_equal(r, [[0, 0, 0, 1, 0, 0]])  # the terminal reward is kept


def test_terminal_masks_no_terminal_first_step_and_two_rewards():
  rows = jnp.array(
    [
      [0.0, 0.2, 0.1, 0.4, 0.0],  # no reward reaches 0.5: nothing ends
      [0.0, 1.0, 0.0, 0.0, 0.0],  # terminal at the first imagined step
      [0.0, 0.0, 1.0, 0.0, 1.0],  # two reward frames: only the first ends the episode
      [0.9, 0.0, 0.0, 0.0, 0.0],  # r_0 (the step into the start frame) is unused
    ]
  )
  r, c, w = terminal_masks(rows, 0.5)
  np.testing.assert_array_equal(w, [[1, 1, 1, 1, 1], [1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]])
  np.testing.assert_array_equal(c, w)
  np.testing.assert_allclose(
    r, [[0.0, 0.2, 0.1, 0.4, 0.0], [0, 1, 0, 0, 0], [0, 0, 1, 0, 0], [0.9, 0, 0, 0, 0]], rtol=1e-7
  )
  # terminal_reward 0 disables terminations: all ones, rewards untouched.
  r0, c0, w0 = terminal_masks(rows, 0.0)
  np.testing.assert_array_equal(c0, np.ones((4, 5)))
  np.testing.assert_array_equal(w0, np.ones((4, 5)))
  np.testing.assert_array_equal(r0, rows)


def test_terminal_masks_returns_do_not_bootstrap_past_the_terminal():
  # Frame 2 is terminal; the reward 5 at frame 4 comes after it and is dropped.
  r, c, w = terminal_masks(jnp.array([[0.0, 0.0, 1.0, 0.0, 5.0]]), 0.5)
  v = jnp.array([[10.0, 20.0, 30.0, 40.0, 50.0]])
  R = lambda_returns(r, v, c, gamma=0.9, lam=0.5)
  # R_3 = r_4 + 0.9 * c_4 * (...)                    = 0 + 0 = 0   (post-terminal: weight 0)
  # R_2 = r_3 + 0.9 * c_3 * (...)                    = 0           (terminal state: weight 0)
  # R_1 = r_2 + 0.9 * c_2 * (...)                    = 1           (step into the terminal)
  # R_0 = r_1 + 0.9 * c_1 * (0.5 * v_1 + 0.5 * R_1) = 0.9 * (10 + 0.5) = 9.45
  np.testing.assert_allclose(R, [[9.45, 1.0, 0.0, 0.0]], rtol=1e-6)
  np.testing.assert_array_equal(w[:, :4], [[1, 1, 0, 0]])  # the counted targets are R_0 and R_1
  # No counted target reads a value at or after the terminal frame.
  v2 = v.at[:, 2:].set(jnp.array([-7.0, 123.0, 1e3]))
  R2 = lambda_returns(r, v2, c, gamma=0.9, lam=0.5)
  np.testing.assert_allclose(R2[:, :2], R[:, :2], rtol=1e-6)


def test_lambda_returns_limits():
  key = jax.random.split(jax.random.key(0), 2)
  r = jax.random.normal(key[0], (2, 5))
  v = jax.random.normal(key[1], (2, 5))
  c = jnp.ones((2, 5))
  g = 0.997
  # lam = 0: one-step TD targets r_{t+1} + g v_{t+1}.
  np.testing.assert_allclose(lambda_returns(r, v, c, g, 0.0), r[:, 1:] + g * v[:, 1:], rtol=1e-5, atol=1e-6)
  # lam = 1: discounted rewards to the end, bootstrapped with v_{T-1}.
  R1 = lambda_returns(r, v, c, g, 1.0)
  mc0 = sum(g**k * r[:, 1 + k] for k in range(4)) + g**4 * v[:, 4]
  np.testing.assert_allclose(R1[:, 0], mc0, rtol=1e-5)
  assert lambda_returns(r, v, c).shape == (2, 4)


def test_pmpo_gradient_signs_and_values():
  logp = jnp.array([0.1, -0.2, 0.3, -0.5, -1.0])
  adv = jnp.array([1.0, -2.0, 0.0, -0.1, 3.0])  # D+ = {0, 2, 4} (A >= 0), D- = {1, 3}
  kl = jnp.array([0.2, 0.1, 0.0, 0.3, 0.4])
  grad = jax.grad(lambda lp: pmpo_loss(lp, kl, adv, alpha=0.5, beta=0.3)[0])(logp)
  # Minimising raises logp for A >= 0 (negative gradient) and lowers it for A < 0.
  np.testing.assert_allclose(grad, [-0.5 / 3, 0.5 / 2, -0.5 / 3, 0.5 / 2, -0.5 / 3], rtol=1e-6)
  assert bool(jnp.all(grad[adv >= 0] < 0)) and bool(jnp.all(grad[adv < 0] > 0))
  # Loss value and the KL gradient beta / N.
  loss, _ = pmpo_loss(logp, kl, adv)
  expected = 0.5 * (-0.2 - 0.5) / 2 - 0.5 * (0.1 + 0.3 - 1.0) / 3 + 0.3 * 1.0 / 5
  np.testing.assert_allclose(loss, expected, rtol=1e-6)
  gkl = jax.grad(lambda k: pmpo_loss(logp, k, adv)[0])(kl)
  np.testing.assert_allclose(gkl, 0.3 / 5, rtol=1e-6)
  # Only sign(A) matters, and no gradient flows into A.
  for scale in (1e-4, 7.0, 1e4):
    np.testing.assert_allclose(pmpo_loss(logp, kl, adv * scale)[0], loss, rtol=1e-6)
  np.testing.assert_allclose(jax.grad(lambda a: pmpo_loss(logp, kl, a)[0])(adv), 0.0)


def test_pmpo_empty_sets_and_mask():
  logp = jnp.array([-1.0, -2.0])
  kl = jnp.array([0.5, 0.5])
  only_pos, _ = pmpo_loss(logp, kl, jnp.array([1.0, 2.0]))
  np.testing.assert_allclose(only_pos, -0.5 * -1.5 + 0.3 * 0.5, rtol=1e-6)
  only_neg, _ = pmpo_loss(logp, kl, jnp.array([-1.0, -2.0]))
  np.testing.assert_allclose(only_neg, 0.5 * -1.5 + 0.3 * 0.5, rtol=1e-6)
  masked, _ = pmpo_loss(logp, kl, jnp.array([1.0, -2.0]), mask_N=jnp.array([True, False]))
  np.testing.assert_allclose(masked, -0.5 * -1.0 + 0.3 * 0.5, rtol=1e-6)


def test_pmpo_kl_is_reverse_kl_to_prior():
  spec = ActionSpec((ActionComponent("move", "discrete", 3),))
  p = np.array([0.9, 0.09, 0.01])  # the trained policy
  q = np.array([1 / 3, 1 / 3, 1 / 3])  # the frozen prior
  kl_pq = float(np.sum(p * np.log(p / q)))
  kl_qp = float(np.sum(q * np.log(q / p)))
  assert abs(kl_pq - kl_qp) > 0.3  # 0.74 vs 1.27 nats
  with nnx.use_eager_sharding(False):
    pol = heads.PolicyHead(spec, width=4, hidden=8, mtp=0, rngs=nnx.Rngs(0))
  # Point the policy at p: zero the output weights and put log p in the bias.
  pol.mlp.w_out[...] = jnp.zeros_like(pol.mlp.w_out[...])
  pol.mlp.b_out[...] = jnp.log(jnp.asarray(p, jnp.float32))[None]
  h = jnp.ones((1, 4))
  prior_params = jnp.log(jnp.asarray(q, jnp.float32))[None]
  kl_term = pol.kl(h, prior_params)
  np.testing.assert_allclose(kl_term, [kl_pq], rtol=1e-5)
  loss, _ = pmpo_loss(jnp.zeros(1), kl_term, jnp.ones(1), beta=0.3)
  np.testing.assert_allclose(loss, 0.3 * kl_pq, rtol=1e-5)
  assert abs(float(loss) - 0.3 * kl_qp) > 0.01


def test_pmpo_step_moves_policy_the_right_way():
  spec = ActionSpec((ActionComponent("move", "discrete", 4),))
  with nnx.use_eager_sharding(False):
    pol = heads.PolicyHead(spec, width=4, hidden=8, mtp=0, rngs=nnx.Rngs(0))
  h = jnp.ones((2, 4))
  actions = Action.labelled_from(jnp.array([[1], [3]], jnp.int32))
  adv = jnp.array([0.5, -0.5])  # action 1 good, action 3 bad
  prior = jax.lax.stop_gradient(pol.params(h, 0))

  def loss_fn(pol):
    return pmpo_loss(pol.log_prob(h, actions, 0), pol.kl(h, prior, 0), adv)[0]

  before = pol.log_prob(h, actions, 0)
  grads = nnx.grad(loss_fn)(pol)
  pol.mlp.b_out[...] = pol.mlp.b_out[...] - 0.1 * grads.mlp.b_out[...]
  after = pol.log_prob(h, actions, 0)
  assert float(after[0]) > float(before[0]) and float(after[1]) < float(before[1])


def test_value_loss_stop_gradient_and_init():
  with nnx.use_eager_sharding(False):
    vh = heads.ValueHead(width=4, hidden=8, rngs=nnx.Rngs(0))
  h = jax.random.normal(jax.random.key(0), (3, 4))
  returns = jnp.array([0.5, -2.0, 10.0])
  loss, metrics = value_loss(vh, h, returns)
  np.testing.assert_allclose(loss, math.log(255), rtol=1e-5)  # zero-init output: uniform bins
  np.testing.assert_allclose(jax.grad(lambda R: value_loss(vh, h, R)[0])(returns), 0.0)
  grads = nnx.grad(lambda m: value_loss(m, h, returns)[0])(vh)
  assert float(jnp.abs(grads.mlp.w_out[...]).sum()) > 0
  assert set(metrics) >= {"value_nll", "value_mae"}
