"""Phase 2 agent losses: multi-token behaviour cloning and reward modelling [P Eq 9].

Alignment convention (the project's, data_pipelines/envs/base.py): frame t holds the
action a_t that LED TO frame t and the reward r_t of that transition; the first frame
of an episode holds a null action (action_labelled False) and a null reward.

The paper writes Eq 9 as -sum_n ln p(a_{t+n} | h_t) - sum_n ln p(r_{t+n} | h_t) in its
own indexing, where a_t is the action *taken at* state t. We decided:

  * Actions: the agent embedding h_t (read at frame t; it has seen frames <= t,
    including a_t) predicts the NEXT action. Offset n targets a_{t+1+n}, stored at
    frame t+1+n (`ACTION_SHIFT = 1`). The n = 0 head is the acting policy.
  * Rewards: offset n targets r_{t+n}, stored at frame t+n (`REWARD_SHIFT = 0`). So the
    n = 0 reward head reads the reward of the transition INTO frame t from h_t, which
    has seen a_t and the resulting frame. This is what lets the reward head "see the
    sampled action" in imagination (a known pitfall; lucidrains does the same): the policy samples
    a_{t+1} at h_t, the dynamics generate frame t+1 with it, and the reward r_{t+1} is
    read from h_{t+1}. Had we chosen r_{t+1+n}, the reward of a_{t+1} would be predicted
    by h_t before a_{t+1} is chosen, i.e. averaged over the BC policy. It is the same
    convention as Dreamer 3 (reward and continue heads on the successor state) and
    matches `lambda_returns` in imagination.py, where r_t belongs to the step into t.

Masks: a target is valid only if its frame lies inside the window, belongs to the same
episode as frame t (no episode start in frames t+1 .. t+shift+n), and is itself valid
(actions: action_labelled; rewards: not the first frame of an episode, which has no
incoming transition).

Shape letters: B batch, T frames, L number of MTP offsets (L+1, n = 0..L), D width,
A action columns.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from dreamer4.models.heads import log_prob as action_log_prob

ACTION_SHIFT = 1  # h_t predicts a_{t+1+n}.
REWARD_SHIFT = 0  # h_t predicts r_{t+n}.


def mtp_targets(x_BT, first_BT, L: int, *, shift: int, valid_BT=None):
  """Gathers the MTP targets x_{t+shift+n} for n = 0..L and their mask.

  Args:
    x_BT: a pytree of arrays [B, T, ...] (e.g. actions or rewards).
    first_BT: bool [B, T], True at the first frame of an episode.
    L: the largest offset (L+1 offsets).
    shift: target frame for offset n is t + shift + n (ACTION_SHIFT or REWARD_SHIFT).
    valid_BT: optional bool [B, T]: whether the value stored at a frame may be a target
      (e.g. action_labelled). Episode-start frames are masked when shift + n >= 1 by the
      boundary rule; pass ~first_BT here to mask them at offset 0 too.

  Returns:
    (targets: the pytree with arrays [B, T, L+1, ...], mask_BTL bool [B, T, L+1]).
  """
  B, T = first_BT.shape
  offs_L = shift + jnp.arange(L + 1)
  idx_TL = jnp.arange(T)[:, None] + offs_L[None, :]
  in_window_TL = idx_TL < T
  idx_TL = jnp.minimum(idx_TL, T - 1)  # clamp; clamped entries are masked below.
  targets = jax.tree.map(lambda x: jnp.asarray(x)[:, idx_TL], x_BT)
  # Episode boundary: the target frame j = t+shift+n is in the same episode as frame t
  # iff no frame in (t, j] starts an episode. Count starts with a cumulative sum.
  starts_BT = jnp.cumsum(first_BT.astype(jnp.int32), axis=1)
  same_episode_BTL = starts_BT[:, idx_TL] == starts_BT[:, :, None]
  mask_BTL = in_window_TL[None] & same_episode_BTL
  if valid_BT is not None:
    mask_BTL &= valid_BT[:, idx_TL]
  return targets, mask_BTL


def _masked_mean_per_offset(x_BTL, mask_BTL):
  # where, not multiply: a non-finite value at a masked target must not leak through.
  total_L = jnp.sum(jnp.where(mask_BTL, x_BTL, 0.0), axis=(0, 1))
  return total_L / jnp.maximum(jnp.sum(mask_BTL.astype(jnp.float32), axis=(0, 1)), 1.0)


def bc_reward_loss(policy_head, reward_head, h_BTD, actions, rewards_BT, first_BT, labelled_BT, L: int, valid_BT=None):
  """[P Eq 9]: multi-token behaviour-cloning and reward NLLs, each summed over n = 0..L.

  Each offset's NLL is averaged over its valid (b, t) targets, then summed over offsets
  (the paper writes a sum over n; how to average over b, t is not stated). The two terms
  are returned separately so the caller can RMS-normalise each [P §3].

  Args:
    policy_head: a PolicyHead with at least L+1 offsets.
    reward_head: a RewardHead with at least L+1 offsets.
    h_BTD: agent embeddings.
    actions: Action [B, T] (data_pipelines/envs/base.py), stored convention; its
      labelled field is not read (the targets' mask is labelled_BT).
    rewards_BT: float rewards, r_t for the transition into frame t.
    first_BT: bool episode-start flags.
    labelled_BT: bool action_labelled flags.
    L: largest MTP offset used.
    valid_BT: optional bool [B, T], False on padding frames past an episode's end
      (data_pipelines/windows.py): they are never targets. None: all valid.

  Returns:
    (losses {"bc": [], "reward": []}, metrics dict of scalars).
  """
  valid_BT = jnp.ones(first_BT.shape, bool) if valid_BT is None else valid_BT.astype(bool)
  act_tgt, act_mask_BTL = mtp_targets(actions, first_BT, L, shift=ACTION_SHIFT, valid_BT=labelled_BT & valid_BT)
  rew_tgt_BTL, rew_mask_BTL = mtp_targets(rewards_BT, first_BT, L, shift=REWARD_SHIFT, valid_BT=~first_BT & valid_BT)

  pol_params = policy_head.params(h_BTD, None)[..., : L + 1, :]  # [B, T, L+1, P]
  logp_BTL = action_log_prob(policy_head.spec, pol_params, act_tgt)
  bc_L = _masked_mean_per_offset(-logp_BTL, act_mask_BTL)

  rew_logits = reward_head.logits(h_BTD, None)[..., : L + 1, :]  # [B, T, L+1, K]
  rew_nll_BTL = reward_head.encoder.loss(rew_logits, rew_tgt_BTL)
  rew_L = _masked_mean_per_offset(rew_nll_BTL, rew_mask_BTL)

  rew_pred_BTL = reward_head.encoder.decode(rew_logits)
  rew_mae = _masked_mean_per_offset(jnp.abs(rew_pred_BTL - rew_tgt_BTL), rew_mask_BTL)
  losses = {"bc": jnp.sum(bc_L), "reward": jnp.sum(rew_L)}
  metrics = {
    "bc_nll": losses["bc"],
    "bc_nll_n0": bc_L[0],
    "reward_nll": losses["reward"],
    "reward_nll_n0": rew_L[0],
    "reward_mae_n0": rew_mae[0],
    "bc_targets_frac": jnp.mean(act_mask_BTL.astype(jnp.float32)),
  }
  return losses, metrics
