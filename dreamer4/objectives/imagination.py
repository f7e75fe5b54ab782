"""Phase 3 losses [P §3.3]: lambda-returns [P Eq 10], value loss and PMPO [P Eq 11].

Index convention (the same as dreamer4/objectives/agent.py and the data pipeline): an
imagined trajectory has frames t = 0..T-1 with agent embeddings h_t. At h_t the policy
samples a_{t+1}; the dynamics produce frame t+1 from it; r_{t+1} and c_{t+1} are read
at frame t+1 (reward head n = 0 and continue flag of the transition INTO frame t+1) and
v_t is the value head at h_t. So r_BT[:, t] and c_BT[:, t] belong to the step into
frame t, and Eq 10 reads, with everything shifted onto the successor state:

  R_{T-1} = v_{T-1}
  R_t     = r_{t+1} + gamma * c_{t+1} * ((1 - lam) * v_{t+1} + lam * R_{t+1}),   t < T-1

r_BT[:, 0] and c_BT[:, 0] (the step into the start frame) are unused. The returns cover
t = 0..T-2; the advantage of the action a_{t+1} sampled at h_t is R_t - v_t.

Where c comes from is not stated by the paper (no continue head is described); pass
ones for no terminations, or derive c from the rewards with `terminal_masks`. lambda is
not stated either; 0.95 is Dreamer 3's.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def terminal_masks(r_BT, terminal_reward: float):
  """Rewards, continue flags and loss weights of a trajectory that ends at a reward.

  The first frame T* >= 1 whose reward r_{T*} (of the step into it) reaches
  `terminal_reward` is terminal, as in Dreamer 3: its state carries weight 0 (neither its
  decision nor its value is trained), frames before it carry weight 1, the step into it
  keeps its reward and has continue 0 (no bootstrap past it), and every later frame has
  reward 0, continue 0 and weight 0. r_BT[:, 0] is unused and never terminal. With
  `terminal_reward` <= 0 nothing ends: rewards unchanged, continue and weight all ones.

  Example: r = [0, 0, 0, 1, 0, 0], terminal_reward 0.5 -> T* = 3,
  c = weight = [1, 1, 1, 0, 0, 0], r unchanged; R_2 = r_3 (see `lambda_returns`).

  Args:
    r_BT: rewards [B, T], r_t of the step into frame t.
    terminal_reward: a reward >= this ends the episode (0 disables).

  Returns:
    (r_BT with post-terminal rewards zeroed, c_BT continue flags, weight_BT float 0/1).
  """
  r_BT = jnp.asarray(r_BT, jnp.float32)
  if terminal_reward <= 0:
    ones_BT = jnp.ones_like(r_BT)
    return r_BT, ones_BT, ones_BT
  t_T = jnp.arange(r_BT.shape[1])
  done_BT = (r_BT >= terminal_reward) & (t_T >= 1)[None]
  n_done_BT = jnp.cumsum(done_BT.astype(jnp.int32), axis=1)
  ended_BT = n_done_BT > 0  # t >= T*
  after_BT = (n_done_BT - done_BT.astype(jnp.int32)) > 0  # t > T*
  r_BT = jnp.where(after_BT, 0.0, r_BT)
  c_BT = jnp.where(ended_BT, 0.0, 1.0)
  # Dreamer 3's weight is the cumulative product of the continue flags; c is absorbing here.
  weight_BT = jnp.cumprod(c_BT, axis=1)
  return r_BT, c_BT, weight_BT


def lambda_returns(r_BT, v_BT, c_BT, gamma: float = 0.997, lam: float = 0.95):
  """[P Eq 10] lambda-returns [B, T-1] for frames 0..T-2 (see the module docstring).

  Args:
    r_BT: rewards, r_t of the step into frame t.
    v_BT: values v_t at frame t.
    c_BT: continue flags (0 where frame t is terminal), of the step into frame t.
    gamma: discount (paper: 0.997).
    lam: lambda (paper: not stated; Dreamer 3: 0.95).
  """
  r_next = jnp.moveaxis(r_BT[:, 1:], 1, 0).astype(jnp.float32)
  v_next = jnp.moveaxis(v_BT[:, 1:], 1, 0).astype(jnp.float32)
  c_next = jnp.moveaxis(c_BT[:, 1:], 1, 0).astype(jnp.float32)

  def step(R_next, xs):
    r, v, c = xs
    R = r + gamma * c * ((1.0 - lam) * v + lam * R_next)
    return R, R

  _, R_TB = jax.lax.scan(step, v_BT[:, -1].astype(jnp.float32), (r_next, v_next, c_next), reverse=True)
  return jnp.moveaxis(R_TB, 0, 1)


def pmpo_loss(logp_N, kl_N, adv_N, alpha: float = 0.5, beta: float = 0.3, mask_N=None):
  """[P Eq 11]: PMPO with a reverse-KL prior; only sign(advantage) is used.

    L = (1-alpha)/|D-| sum_{D-} logp  -  alpha/|D+| sum_{D+} logp  +  beta/N sum KL

  D+ = {A >= 0}, D- = {A < 0}. Minimising lowers log pi of negative-advantage actions
  and raises it for non-negative ones. An empty D+ or D- contributes 0 (its count is
  clamped to 1). No return or advantage normalisation and no entropy bonus [P App. F].

  Args:
    logp_N: log pi_theta(a_i | s_i) of the imagined actions (differentiable).
    kl_N: KL[pi_theta(.|s_i) || pi_prior(.|s_i)] (reverse KL, policy first), analytic.
    adv_N: advantages R^lambda - v (their gradient is stopped; only the sign matters).
    alpha: weight of the positive set (paper: 0.5).
    beta: weight of the prior KL (paper: 0.3).
    mask_N: optional bool; False entries are left out of D+, D- and N.

  Returns:
    (loss scalar, metrics dict).
  """
  adv_N = jax.lax.stop_gradient(adv_N)
  valid = jnp.ones(adv_N.shape, bool) if mask_N is None else mask_N.astype(bool)
  pos = (adv_N >= 0) & valid
  neg = (adv_N < 0) & valid
  n_pos = jnp.sum(pos.astype(jnp.float32))
  n_neg = jnp.sum(neg.astype(jnp.float32))
  n_all = jnp.sum(valid.astype(jnp.float32))
  neg_term = jnp.sum(jnp.where(neg, logp_N, 0.0)) / jnp.maximum(n_neg, 1.0)
  pos_term = jnp.sum(jnp.where(pos, logp_N, 0.0)) / jnp.maximum(n_pos, 1.0)
  kl_term = jnp.sum(jnp.where(valid, kl_N, 0.0)) / jnp.maximum(n_all, 1.0)
  loss = (1.0 - alpha) * neg_term - alpha * pos_term + beta * kl_term
  metrics = {
    "pmpo_loss": loss,
    "pmpo_pos_frac": n_pos / jnp.maximum(n_all, 1.0),
    "pmpo_logp_pos": pos_term,
    "pmpo_logp_neg": neg_term,
    "pmpo_kl": kl_term,
  }
  return loss, metrics


def value_loss(value_head, h_ND, returns_N, mask_N=None):
  """[P Eq 10] value loss: two-hot NLL of the lambda-return target.

  The target is under stop-gradient. Averaged over valid states (the paper sums over
  t; the normalisation is not stated).

  Returns:
    (loss scalar, metrics dict).
  """
  returns_N = jax.lax.stop_gradient(returns_N)
  nll_N = value_head.loss(h_ND, returns_N, 0)
  m = jnp.ones(nll_N.shape, jnp.float32) if mask_N is None else mask_N.astype(jnp.float32)
  denom = jnp.maximum(jnp.sum(m), 1.0)
  loss = jnp.sum(nll_N * m) / denom
  pred_N = value_head.predict(h_ND, 0)
  metrics = {
    "value_nll": loss,
    "value_mae": jnp.sum(jnp.abs(pred_N - returns_N) * m) / denom,
    "return_mean": jnp.sum(returns_N * m) / denom,
  }
  return loss, metrics
