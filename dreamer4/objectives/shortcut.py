"""Shortcut forcing objective for the dynamics model [P §2, Eq 4, Eq 6–8].

Every frame gets its own signal level tau and step size d (diffusion forcing), is
corrupted to z~ = (1 - tau) z0 + tau z1, and the model predicts the clean frame
(x-prediction). Frames at the smallest step d_min = 1/k_max regress the data
(flow term); frames with larger steps regress the end point of two half steps of
the model itself, under stop-gradient (bootstrap term), in the division-free form

  || z1_hat - (z~ + (1 - tau) * sg(b' + b'') / 2) ||^2
    == (1 - tau)^2 || (z1_hat - z~) / (1 - tau) - sg(b' + b'') / 2 ||^2     [P Eq 7]

Both terms are weighted per frame by the ramp w(tau) = 0.9 tau + 0.1 [P Eq 8],
averaged over tokens and channels, then over frames and batch. The caller applies
the RMS normaliser.

Index conventions (tau index j = tau * k_max, d index e with d = 2**-e) are those
of `dreamer4.models.dynamics`.

Shape letters: B batch, b the bootstrap rows (the first n of B), T frames, N latent
tokens, L latent channels.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from dreamer4.models.dynamics import d_from_index, log2_exact

# apply_fn(z_BTNL, tau_idx_BT, d_idx_BT, independent_B) -> z1_hat_BTNL. It may be
# called on the first n rows of the batch only (bootstrap passes); it must slice its
# own per-row inputs (actions) to z.shape[0] rows. See dynamics.make_training_fn.
ApplyFn = Callable[..., jax.Array]


def ramp_weight(tau):
  """[P Eq 8]: w(tau) = 0.9 tau + 0.1, from 0.1 at pure noise to 1 when clean."""
  return 0.9 * tau + 0.1


def sample_tau_d(rng, B: int, T: int, k_max: int) -> dict:
  """Samples (tau, d) independently per frame by Eq 4.

  K = 2**e with e ~ U{0..log2 k_max}, d = 1/K, tau = j/K with j ~ U{0..K-1}. (The
  paper's "tau ~ U{0, 1/d, ..., 1 - 1/d}" is a typo for this grid.) d = 1 forces
  tau = 0: the model also learns one jump from pure noise.

  Returns:
    dict with tau_idx_BT (int32, j * k_max / K on the k_max grid), d_idx_BT (int32,
    e), tau_BT and d_BT (float32).
  """
  log2_k_max = log2_exact(k_max)
  e_rng, j_rng = jax.random.split(rng)
  e_BT = jax.random.randint(e_rng, (B, T), 0, log2_k_max + 1, dtype=jnp.int32)
  K_BT = jnp.left_shift(jnp.int32(1), e_BT)
  j_BT = jax.random.randint(j_rng, (B, T), 0, K_BT, dtype=jnp.int32)
  tau_idx_BT = j_BT * (k_max // K_BT)
  return dict(
    tau_idx_BT=tau_idx_BT,
    d_idx_BT=e_BT,
    tau_BT=tau_idx_BT.astype(jnp.float32) / k_max,
    d_BT=d_from_index(e_BT),
  )


def _bt11(x_BT):
  return x_BT[:, :, None, None]


def bootstrap_end_point(z_tilde_BTNL, b1_BTNL, b2_BTNL, tau_BT):
  """Bootstrapped clean-frame target z~ + (1 - tau) (b' + b'') / 2, under sg."""
  v_bar_BTNL = 0.5 * (b1_BTNL + b2_BTNL)
  return jax.lax.stop_gradient(z_tilde_BTNL + _bt11(1.0 - tau_BT) * v_bar_BTNL)


def bootstrap_frame_loss(z1_hat_BTNL, z_tilde_BTNL, b1_BTNL, b2_BTNL, tau_BT):
  """Division-free bootstrap loss per frame [B,T]: mean ||z1_hat - end point||^2."""
  target_BTNL = bootstrap_end_point(z_tilde_BTNL, b1_BTNL, b2_BTNL, tau_BT)
  return jnp.mean(jnp.square(z1_hat_BTNL - target_BTNL), axis=(2, 3))


def bootstrap_target_velocity_form(z1_hat_BTNL, z_tilde_BTNL, b1_BTNL, b2_BTNL, tau_BT):
  """The paper's Eq 7 bootstrap loss per frame [B,T], computed in v-space.

  (1 - tau)^2 * mean || (z1_hat - z~) / (1 - tau) - sg(b' + b'') / 2 ||^2. It
  divides the network output by (1 - tau); `bootstrap_frame_loss` is the same
  quantity without that division and is what the objective uses. Defined for
  tau < 1 (always true for bootstrap frames: tau <= 1 - d).
  """
  one_minus_tau_BT11 = _bt11(1.0 - tau_BT)
  v_hat_BTNL = (z1_hat_BTNL - z_tilde_BTNL) / one_minus_tau_BT11
  v_bar_BTNL = jax.lax.stop_gradient(0.5 * (b1_BTNL + b2_BTNL))
  return jnp.mean(jnp.square(one_minus_tau_BT11) * jnp.square(v_hat_BTNL - v_bar_BTNL), axis=(2, 3))


def shortcut_loss(
  apply_fn: ApplyFn,
  z1_BTNL,
  rng,
  *,
  k_max: int,
  bootstrap_fraction: float = 0.25,
  independent_fraction: float = 0.3,
  ramp: bool = True,
  return_frames: bool = False,
  row_weight_B=None,
  valid_BT=None,
):
  """Shortcut forcing loss [P Eq 6–8] on one batch of clean latents.

  Row split (our choice; the paper's Eq 4 applied to every row is
  bootstrap_fraction=1.0): the first round(bootstrap_fraction * B) rows draw
  (tau, d) by Eq 4 per frame and pay two extra forward passes (no gradient) for
  their bootstrap targets; the remaining rows use d = d_min on every frame (flow
  term only, tau = j / k_max). Rows of a shuffled batch are exchangeable, so taking
  the first rows is as good as a random subset and keeps shapes static. The default
  0.25 follows the nicklashansen/edwhu precedent; a 50% split is known to run out of
  memory on one GPU. Frames of bootstrap rows that drew d = d_min get the flow
  term, as Eq 7 says.

  In the bootstrap passes the whole row is advanced together [P Eq 7]: bootstrap
  frames step to z' at tau + d/2; frames without a bootstrap term keep their own z~,
  tau and d_min as context.

  round(independent_fraction * B) rows, picked at random, get a diagonal time mask
  (trained as independent images [P §4]).

  Args:
    apply_fn: (z_BTNL, tau_idx_BT, d_idx_BT, independent_B) -> z1_hat_BTNL; may be
      called on the first n rows only (see `dynamics.make_training_fn`).
    z1_BTNL: Clean tokenizer latents.
    rng: PRNG key (noise, levels, independent rows).
    k_max: Finest grid, a power of two; d_min = 1 / k_max.
    bootstrap_fraction: Share of rows on Eq 4 step sizes (static).
    independent_fraction: Share of rows trained as independent images (static).
    ramp: Apply the Eq 8 ramp weight (False = uniform weights, for ablations).
    return_frames: Also return per-frame arrays under metrics["frames"] (tests,
      debugging); keep False in training so metrics stay scalar.
    row_weight_B: Optional [B] weights: the loss becomes the weighted mean over rows.
      Bootstrap rows are still the first rows, so callers that weight rows by data
      source should pass only the rows that carry the loss instead (phase 2 does:
      `dynamics_rows`), which keeps the bootstrap share exact.
    valid_BT: Optional bool [B, T]: False on padding frames past an episode's end
      (data_pipelines/windows.py); they get weight 0 in the loss and every metric.

  Returns:
    (loss, metrics). loss = mean over frames of w * (flow or bootstrap term);
    metrics: flow_term + bootstrap_term == loss (their shares of it), flow_loss /
    bootstrap_loss (weighted means over their own frames), flow_mse (unweighted),
    flow_frames / bootstrap_frames / bootstrap_rows / independent_rows counts.
  """
  B, T = z1_BTNL.shape[:2]
  log2_k_max = log2_exact(k_max)
  n_boot = min(B, max(0, int(round(bootstrap_fraction * B))))
  n_ind = min(B, max(0, int(round(independent_fraction * B))))
  noise_rng, boot_rng, flow_rng, ind_rng = jax.random.split(rng, 4)
  z1_BTNL = z1_BTNL.astype(jnp.float32)

  # Levels: Eq 4 on the bootstrap rows, d_min with tau = j / k_max on the rest.
  levels = sample_tau_d(boot_rng, n_boot, T, k_max)
  flow_tau_idx = jax.random.randint(flow_rng, (B - n_boot, T), 0, k_max, dtype=jnp.int32)
  tau_idx_BT = jnp.concatenate([levels["tau_idx_BT"], flow_tau_idx], axis=0)
  d_idx_BT = jnp.concatenate([levels["d_idx_BT"], jnp.full((B - n_boot, T), log2_k_max, jnp.int32)], axis=0)
  tau_BT = tau_idx_BT.astype(jnp.float32) / k_max
  d_BT = d_from_index(d_idx_BT)
  is_flow_BT = d_idx_BT == log2_k_max
  independent_B = jax.random.permutation(ind_rng, B) < n_ind

  z0_BTNL = jax.random.normal(noise_rng, z1_BTNL.shape, jnp.float32)
  z_tilde_BTNL = _bt11(1.0 - tau_BT) * z0_BTNL + _bt11(tau_BT) * z1_BTNL
  z1_hat_BTNL = apply_fn(z_tilde_BTNL, tau_idx_BT, d_idx_BT, independent_B).astype(jnp.float32)
  flow_BT = jnp.mean(jnp.square(z1_hat_BTNL - z1_BTNL), axis=(2, 3))

  boot_BT = jnp.zeros((B, T), jnp.float32)
  if n_boot:
    rows = slice(0, n_boot)
    zt_bTNL, tau_bT, d_bT = z_tilde_BTNL[rows], tau_BT[rows], d_BT[rows]
    tau_idx_bT, d_idx_bT, ind_b = tau_idx_BT[rows], d_idx_BT[rows], independent_B[rows]
    is_boot_bT = ~is_flow_BT[rows]
    is_boot_bT11 = _bt11(is_boot_bT)
    half_idx_bT = jnp.where(is_boot_bT, d_idx_bT + 1, d_idx_bT)  # d/2 <-> e + 1
    # d/2 in grid units is k_max >> (e + 1) >= 1 on bootstrap frames.
    half_grid_bT = jnp.right_shift(jnp.int32(k_max), jnp.minimum(half_idx_bT, log2_k_max))

    # Pass 1: the first half step from z~ at (tau, d/2) gives b'.
    f1_bTNL = jax.lax.stop_gradient(apply_fn(zt_bTNL, tau_idx_bT, half_idx_bT, ind_b))
    b1_bTNL = (f1_bTNL.astype(jnp.float32) - zt_bTNL) / _bt11(1.0 - tau_bT)  # tau < 1 always
    # Only bootstrap frames move to z' at tau + d/2; the others stay at their own z~
    # (and level) as context for the second pass.
    z_mid_bTNL = jnp.where(is_boot_bT11, zt_bTNL + b1_bTNL * _bt11(0.5 * d_bT), zt_bTNL)
    tau_mid_idx_bT = jnp.where(is_boot_bT, tau_idx_bT + half_grid_bT, tau_idx_bT)
    # Pass 2: the second half step from z' at (tau + d/2, d/2) gives b''.
    f2_bTNL = jax.lax.stop_gradient(apply_fn(z_mid_bTNL, tau_mid_idx_bT, half_idx_bT, ind_b))
    # 1 - tau - d/2 >= d/2 > 0 on bootstrap frames; 1 elsewhere keeps values finite.
    denom_bT = jnp.where(is_boot_bT, 1.0 - tau_bT - 0.5 * d_bT, 1.0)
    b2_bTNL = (f2_bTNL.astype(jnp.float32) - z_mid_bTNL) / _bt11(denom_bT)
    boot_bT = bootstrap_frame_loss(z1_hat_BTNL[rows], zt_bTNL, b1_bTNL, b2_bTNL, tau_bT)
    boot_BT = boot_BT.at[rows].set(boot_bT)

  w_BT = ramp_weight(tau_BT) if ramp else jnp.ones_like(tau_BT)
  loss_BT = w_BT * jnp.where(is_flow_BT, flow_BT, boot_BT)
  # Frame weights: validity times row weight. With every frame valid and no row weights
  # this is the plain mean over frames.
  fw_BT = jnp.ones((B, T), jnp.float32) if valid_BT is None else valid_BT.astype(jnp.float32)
  if row_weight_B is not None:
    fw_BT = fw_BT * row_weight_B.astype(jnp.float32)[:, None]
  total_w = jnp.maximum(jnp.sum(fw_BT), 1e-6)
  loss = jnp.sum(loss_BT * fw_BT) / total_w

  sg = jax.lax.stop_gradient
  valid_f = (fw_BT > 0).astype(jnp.float32)
  flow_f = is_flow_BT.astype(jnp.float32) * valid_f
  boot_f = (1.0 - is_flow_BT.astype(jnp.float32)) * valid_f
  n_flow, n_bootf = jnp.sum(flow_f), jnp.sum(boot_f)
  metrics = {
    "loss": sg(loss),
    "flow_term": sg(jnp.sum(loss_BT * flow_f * fw_BT) / total_w),
    "bootstrap_term": sg(jnp.sum(loss_BT * boot_f * fw_BT) / total_w),
    "flow_loss": sg(jnp.sum(loss_BT * flow_f) / jnp.maximum(n_flow, 1.0)),
    "bootstrap_loss": sg(jnp.sum(loss_BT * boot_f) / jnp.maximum(n_bootf, 1.0)),
    "flow_mse": sg(jnp.sum(flow_BT * flow_f) / jnp.maximum(n_flow, 1.0)),
    "flow_frames": n_flow,
    "bootstrap_frames": n_bootf,
    "bootstrap_rows": jnp.float32(n_boot),
    "independent_rows": jnp.float32(n_ind),
  }
  if return_frames:
    metrics["frames"] = dict(
      tau_idx_BT=tau_idx_BT,
      d_idx_BT=d_idx_BT,
      tau_BT=tau_BT,
      d_BT=d_BT,
      weight_BT=w_BT,
      loss_BT=sg(loss_BT),
      flow_BT=sg(flow_BT),
      boot_BT=sg(boot_BT),
      is_flow_BT=is_flow_BT,
      independent_B=independent_B,
    )
  return loss, metrics
