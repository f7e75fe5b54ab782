"""Tokenizer training loss [P Eq 5]: RMS-normalised MSE + 0.2 * RMS-normalised LPIPS."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from dreamer4.models.lpips import lpips_distance
from dreamer4.objectives.normalize import rms_normalize

RMS_NAMES = ("mse", "lpips")


def tokenizer_loss(
  model,
  lpips_params,
  frames_BTHWC_uint8,
  rms_state,
  rng,
  lpips_weight: float = 0.2,
  lpips_frames: int = 8,
  max_mask_prob: float = 0.9,
  rms_decay: float = 0.99,
  valid_BT=None,
):
  """Computes the tokenizer loss; differentiable w.r.t. `model` via nnx.value_and_grad.

  The options after `rng` are deliberately not keyword-only: nnx.value_and_grad
  resolves keyword arguments to positions and rejects keyword-only parameters.
  They must be Python values (static under jit), since they set shapes.

  Args:
    model: A `Tokenizer`.
    lpips_params: Pytree from `load_lpips_params` (an argument, never a closure); unused
      (may be None) when `lpips_weight` is 0.
    frames_BTHWC_uint8: uint8 frames [B,T,H,W,C]; converted to [0,1] floats here,
      on device, so the host ships 4x fewer bytes.
    rms_state: Normaliser state with entries "mse" and "lpips" (`rms_init(RMS_NAMES)`).
    rng: PRNG key; split for the MAE mask and the LPIPS frame subset.
    lpips_weight: Weight of the normalised LPIPS term (paper: 0.2); 0 skips the VGG pass
      entirely (no "lpips" metrics; its normaliser entry passes through untouched).
    lpips_frames: LPIPS is evaluated on this many frames drawn at random (without
      replacement) from the B*T frames of the batch, to keep the VGG cost down. Our
      choice, not the paper's; <= 0 means all frames.
    max_mask_prob: Upper bound of the per-image MAE mask probability.
    rms_decay: Decay of the RMS normaliser.
    valid_BT: Optional bool [B,T]; False marks padding frames past an episode's end
      (data_pipelines/windows.py), which count in neither term. None: all valid.

  Returns:
    (loss, (new_rms_state, metrics)); metrics holds scalar float32 values.
  """
  mask_rng, lpips_rng = jax.random.split(rng)
  frames_BTHWC = frames_BTHWC_uint8.astype(jnp.float32) / 255.0
  out = model(frames_BTHWC, mask_rng=mask_rng, max_mask_prob=max_mask_prob)
  recon_BTHWC = out["recon_BTHWC"]

  # MSE over the full frame, masked and visible patches alike (the paper does not
  # say whether only masked patches count; "reconstruction objective" suggests all).
  B, T, H, W, C = frames_BTHWC.shape
  w_N = jnp.ones((B * T,), jnp.float32) if valid_BT is None else valid_BT.reshape(B * T).astype(jnp.float32)
  mse_N = jnp.mean(jnp.square(recon_BTHWC - frames_BTHWC), axis=(2, 3, 4)).reshape(B * T)
  mse = jnp.sum(mse_N * w_N) / jnp.maximum(jnp.sum(w_N), 1.0)

  mse_norm, rms_state = rms_normalize(rms_state, "mse", mse, decay=rms_decay)
  loss = mse_norm
  mse_sg = jax.lax.stop_gradient(mse)
  metrics = {
    "mse": mse_sg,
    "mse_norm": jax.lax.stop_gradient(mse_norm),
    # PSNR of the reconstruction from the masked input, pixels in [0,1].
    "psnr": -10.0 * jnp.log10(jnp.maximum(mse_sg, 1e-10)),
    "mask_fraction": jnp.mean(out["mask_BTP"].astype(jnp.float32)),
  }
  if lpips_weight:
    recon_NHWC = recon_BTHWC.reshape(B * T, H, W, C)
    target_NHWC = frames_BTHWC.reshape(B * T, H, W, C)
    if 0 < lpips_frames < B * T:
      # A random subset of the valid frames (padding frames have probability 0; when
      # fewer are valid than the subset, the padding picks get weight 0).
      p_N = None if valid_BT is None else (w_N + 1e-6) / jnp.sum(w_N + 1e-6)
      idx_K = jax.random.choice(lpips_rng, B * T, (lpips_frames,), replace=False, p=p_N)
      recon_NHWC, target_NHWC, w_K = recon_NHWC[idx_K], target_NHWC[idx_K], w_N[idx_K]
    else:
      w_K = w_N
    lpips_K = lpips_distance(lpips_params, recon_NHWC, target_NHWC)
    lpips = jnp.sum(lpips_K * w_K) / jnp.maximum(jnp.sum(w_K), 1.0)
    lpips_norm, rms_state = rms_normalize(rms_state, "lpips", lpips, decay=rms_decay)
    loss = mse_norm + lpips_weight * lpips_norm
    metrics.update(lpips=jax.lax.stop_gradient(lpips), lpips_norm=jax.lax.stop_gradient(lpips_norm))
  metrics["loss"] = jax.lax.stop_gradient(loss)
  return loss, (rms_state, metrics)
