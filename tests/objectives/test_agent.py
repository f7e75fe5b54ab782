"""Tests for the agent heads and the Phase 2 MTP alignment and losses."""

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from data_pipelines.envs.base import Action, ActionComponent, ActionSpec
from dreamer4.models import heads
from dreamer4.objectives.agent import ACTION_SHIFT, REWARD_SHIFT, bc_reward_loss, mtp_targets

SPEC = ActionSpec((ActionComponent("move", "discrete", 3), ActionComponent("keys", "binary", 2)))
SPEC_ALL = ActionSpec(
  (
    ActionComponent("move", "discrete", 3),
    ActionComponent("keys", "binary", 2),
    ActionComponent("stick", "continuous", 1),
  )
)

# One window of T = 6 frames: episode A is frames 0-2, episode B starts at frame 3.
# Frame 4's action is unlabelled (as the first frame of each episode is).
FIRST = np.array([[1, 0, 0, 1, 0, 0]], bool)
LABELLED = np.array([[0, 1, 1, 0, 0, 1]], bool)
ACT = np.array([[10, 11, 12, 13, 14, 15]], np.int32)  # a_t = 10 + t
REW = np.array([[100, 101, 102, 103, 104, 105]], np.float32)  # r_t = 100 + t


def test_mtp_action_targets_line_up():
  tgt, mask = mtp_targets(jnp.asarray(ACT), jnp.asarray(FIRST), 2, shift=ACTION_SHIFT, valid_BT=jnp.asarray(LABELLED))
  tgt, mask = np.asarray(tgt)[0], np.asarray(mask)[0]
  assert tgt.shape == mask.shape == (6, 3)
  # Head n at frame t predicts a_{t+1+n} (the next action and the L after it).
  for t in range(6):
    for n in range(3):
      if mask[t, n]:
        assert tgt[t, n] == 10 + t + 1 + n
  expected = np.array(
    [
      [1, 1, 0],  # t=0: a_1, a_2 ok; a_3 is in episode B
      [1, 0, 0],  # t=1: a_2; a_3, a_4 are in episode B
      [0, 0, 0],  # t=2: a_3.. all in episode B
      [0, 1, 0],  # t=3: a_4 unlabelled; a_5 ok; a_6 past the window
      [1, 0, 0],  # t=4: a_5; past the window
      [0, 0, 0],  # t=5: past the window
    ],
    bool,
  )
  np.testing.assert_array_equal(mask, expected)


def test_mtp_reward_targets_line_up():
  first = jnp.asarray(FIRST)
  tgt, mask = mtp_targets(jnp.asarray(REW), first, 2, shift=REWARD_SHIFT, valid_BT=~first)
  tgt, mask = np.asarray(tgt)[0], np.asarray(mask)[0]
  # Head n at frame t predicts r_{t+n}: the reward of the step into frame t+n.
  for t in range(6):
    for n in range(3):
      if mask[t, n]:
        assert tgt[t, n] == 100 + t + n
  expected = np.array(
    [
      [0, 1, 1],  # t=0: r_0 is an episode start (no incoming transition)
      [1, 1, 0],  # t=1: r_1, r_2; r_3 in episode B
      [1, 0, 0],  # t=2
      [0, 1, 1],  # t=3: r_3 episode start; unlabelled action at 4 does not mask r_4
      [1, 1, 0],  # t=4: past the window at n=2
      [1, 0, 0],  # t=5
    ],
    bool,
  )
  np.testing.assert_array_equal(mask, expected)


def test_mtp_targets_pytree_shapes():
  x = (jnp.arange(2 * 5 * 3).reshape(2, 5, 3), jnp.ones((2, 5, 1)))
  tgt, mask = mtp_targets(x, jnp.zeros((2, 5), bool), 3, shift=1)
  assert tgt[0].shape == (2, 5, 4, 3) and tgt[1].shape == (2, 5, 4, 1) and mask.shape == (2, 5, 4)
  np.testing.assert_array_equal(tgt[0][1, 0, 2], x[0][1, 3])
  np.testing.assert_array_equal(mask[0].sum(-1), [4, 3, 2, 1, 0])


def test_categorical_and_bernoulli_numbers():
  p_cat, q_cat = np.array([0.2, 0.3, 0.5]), np.array([0.5, 0.25, 0.25])
  p_bits, q_bits = np.array([0.8, 0.3]), np.array([0.5, 0.6])
  logit = lambda p: np.log(p) - np.log1p(-p)
  params_p = jnp.asarray(np.concatenate([np.log(p_cat), logit(p_bits)]), jnp.float32)
  params_q = jnp.asarray(np.concatenate([np.log(q_cat), logit(q_bits)]), jnp.float32)
  action = Action.labelled_from(jnp.array([2, 1, 0], jnp.int32))
  np.testing.assert_allclose(
    heads.log_prob(SPEC, params_p, action), math.log(0.5) + math.log(0.8) + math.log(0.7), rtol=1e-5
  )
  ent_cat = -np.sum(p_cat * np.log(p_cat))
  ent_bits = -np.sum(p_bits * np.log(p_bits) + (1 - p_bits) * np.log(1 - p_bits))
  np.testing.assert_allclose(heads.entropy(SPEC, params_p), ent_cat + ent_bits, rtol=1e-5)
  kl_pq = np.sum(p_cat * np.log(p_cat / q_cat)) + np.sum(
    p_bits * np.log(p_bits / q_bits) + (1 - p_bits) * np.log((1 - p_bits) / (1 - q_bits))
  )
  kl_qp = np.sum(q_cat * np.log(q_cat / p_cat)) + np.sum(
    q_bits * np.log(q_bits / p_bits) + (1 - q_bits) * np.log((1 - q_bits) / (1 - p_bits))
  )
  assert abs(kl_pq - kl_qp) > 0.05  # the direction matters for this pair
  np.testing.assert_allclose(heads.kl(SPEC, params_p, params_q), kl_pq, rtol=1e-5)
  np.testing.assert_allclose(heads.kl(SPEC, params_q, params_p), kl_qp, rtol=1e-5)
  np.testing.assert_allclose(heads.kl(SPEC, params_p, params_p), 0.0, atol=1e-6)


def test_gaussian_numbers_and_sampling():
  spec = ActionSpec((ActionComponent("stick", "continuous", 1),))
  params_p = jnp.array([1.0, math.log(2.0)])  # mean 1, std 2
  params_q = jnp.array([0.0, 0.0])  # mean 0, std 1
  lp = heads.log_prob(spec, params_p, Action.labelled_from(continuous=jnp.array([3.0])))
  np.testing.assert_allclose(lp, -0.5 - math.log(2.0) - 0.5 * math.log(2 * math.pi), rtol=1e-5)
  np.testing.assert_allclose(heads.entropy(spec, params_p), 0.5 * math.log(2 * math.pi * math.e * 4.0), rtol=1e-5)
  np.testing.assert_allclose(heads.kl(spec, params_p, params_q), -math.log(2.0) + 0.5 * (4.0 + 1.0) - 0.5, rtol=1e-5)
  # Samples come back in the stored layout and follow the distribution.
  many = jnp.broadcast_to(jnp.concatenate([jnp.array([-9.0, 9.0, -9.0, 9.0, -9.0]), params_p]), (4000, 7))
  sampled = heads.sample(SPEC_ALL, many, jax.random.key(0))
  assert isinstance(sampled, Action) and sampled.labelled.shape == (4000,) and sampled.labelled.all()
  disc, cont = sampled.discrete, sampled.continuous
  assert disc.shape == (4000, 3) and disc.dtype == jnp.int32 and cont.shape == (4000, 1)
  np.testing.assert_array_equal(disc[0], [1, 1, 0])
  assert abs(float(cont.mean()) - 1.0) < 0.15 and abs(float(cont.std()) - 2.0) < 0.15


def _build(L=2, width=8):
  with nnx.use_eager_sharding(False):
    pol = heads.PolicyHead(SPEC, width=width, hidden=16, mtp=L, rngs=nnx.Rngs(0))
    rew = heads.RewardHead(width=width, hidden=16, mtp=L, rngs=nnx.Rngs(1))
  return pol, rew


def test_heads_shapes_init_and_names():
  pol, rew = _build()
  h = jax.random.normal(jax.random.key(0), (2, 4, 8))
  assert pol.params(h, None).shape == (2, 4, 3, 5) and pol.params(h, 1).shape == (2, 4, 5)
  assert rew.logits(h, None).shape == (2, 4, 3, 255)
  np.testing.assert_allclose(rew.predict(h), 0.0, atol=1e-5)  # zero-initialised output layer
  for module in (pol, rew):
    for _, p in nnx.to_flat_state(nnx.state(module, nnx.Param)):
      names = p.get_metadata()["out_sharding"]
      assert len(names) == p.value.ndim
      assert len([x for x in names if x is not None]) == len({x for x in names if x is not None})


def test_bc_reward_loss_masks_and_grads():
  L = 2
  pol, rew = _build(L)
  h = jax.random.normal(jax.random.key(1), (1, 6, 8))
  disc = jnp.stack([jnp.asarray(ACT[0] % 3), jnp.asarray(ACT[0] % 2), jnp.ones(6, jnp.int32)], -1)[None]
  actions = Action.labelled_from(disc)
  args = (jnp.asarray(REW) / 100.0, jnp.asarray(FIRST), jnp.asarray(LABELLED), L)
  # One compile shared by the three evaluations below (eager op-by-op is slow on CPU).
  loss_fn = nnx.jit(lambda pol, rew, acts, r: bc_reward_loss(pol, rew, h, acts, r, *args[1:]))
  losses, metrics = loss_fn(pol, rew, actions, args[0])
  assert np.isfinite(float(losses["bc"])) and np.isfinite(float(losses["reward"]))
  # Zero-init reward output: uniform over 255 bins at every offset.
  np.testing.assert_allclose(losses["reward"], (L + 1) * math.log(255), rtol=1e-5)
  # Frame 3's action (episode start) and frame 0's reward are never targets.
  disc2 = disc.at[0, 3].set(jnp.array([2, 0, 0]))
  rew2 = args[0].at[0, 0].set(50.0)
  losses2, _ = loss_fn(pol, rew, actions._replace(discrete=disc2), rew2)
  np.testing.assert_allclose(losses2["bc"], losses["bc"], rtol=1e-6)
  np.testing.assert_allclose(losses2["reward"], losses["reward"], rtol=1e-6)
  # Frame 1's action is a target (t=0, n=0), so changing it changes the loss.
  disc3 = disc.at[0, 1, 0].set((disc[0, 1, 0] + 1) % 3)
  losses3, _ = loss_fn(pol, rew, actions._replace(discrete=disc3), args[0])
  assert abs(float(losses3["bc"] - losses["bc"])) > 1e-6

  def total(pol, rew):
    ls, _ = bc_reward_loss(pol, rew, h, actions, *args)
    return ls["bc"] + ls["reward"]

  g_pol, g_rew = nnx.jit(nnx.grad(total, argnums=(0, 1)))(pol, rew)
  assert float(jnp.abs(g_pol.mlp.w_out[...]).sum()) > 0
  assert float(jnp.abs(g_rew.mlp.w_out[...]).sum()) > 0
