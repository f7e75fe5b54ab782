"""Tokenizer training loss [P Eq 5]: RMS-normalised MSE + 0.2 * RMS-normalised LPIPS."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from dreamer4.models.lpips import lpips_distance
from dreamer4.objectives.normalize import rms_normalize

RMS_NAMES = ("mse", "lpips")


def tokenizer_loss(
    model, lpips_params, frames_BTHWC_uint8, rms_state, rng, lpips_weight: float = 0.2,
    lpips_frames: int = 8, max_mask_prob: float = 0.9, rms_decay: float = 0.99,
):
  """Computes the tokenizer loss; differentiable w.r.t. `model` via nnx.value_and_grad.

  The options after `rng` are deliberately not keyword-only: nnx.value_and_grad
  resolves keyword arguments to positions and rejects keyword-only parameters.
  They must be Python values (static under jit), since they set shapes.

  Args:
    model: A `Tokenizer`.
    lpips_params: Pytree from `load_lpips_params` (an argument, never a closure).
    frames_BTHWC_uint8: uint8 frames [B,T,H,W,C]; converted to [0,1] floats here,
      on device, so the host ships 4x fewer bytes.
    rms_state: Normaliser state with entries "mse" and "lpips" (`rms_init(RMS_NAMES)`).
    rng: PRNG key; split for the MAE mask and the LPIPS frame subset.
    lpips_weight: Weight of the normalised LPIPS term (paper: 0.2).
    lpips_frames: LPIPS is evaluated on this many frames drawn at random (without
      replacement) from the B*T frames of the batch, to keep the VGG cost down. Our
      choice, not the paper's; <= 0 means all frames.
    max_mask_prob: Upper bound of the per-image MAE mask probability.
    rms_decay: Decay of the RMS normaliser.

  Returns:
    (loss, (new_rms_state, metrics)); metrics holds scalar float32 values.
  """
  mask_rng, lpips_rng = jax.random.split(rng)
  frames_BTHWC = frames_BTHWC_uint8.astype(jnp.float32) / 255.0
  out = model(frames_BTHWC, mask_rng=mask_rng, max_mask_prob=max_mask_prob)
  recon_BTHWC = out["recon_BTHWC"]

  # MSE over the full frame, masked and visible patches alike (the paper does not
  # say whether only masked patches count; "reconstruction objective" suggests all).
  mse = jnp.mean(jnp.square(recon_BTHWC - frames_BTHWC))

  B, T, H, W, C = frames_BTHWC.shape
  recon_NHWC = recon_BTHWC.reshape(B * T, H, W, C)
  target_NHWC = frames_BTHWC.reshape(B * T, H, W, C)
  if 0 < lpips_frames < B * T:
    idx_K = jax.random.choice(lpips_rng, B * T, (lpips_frames,), replace=False)
    recon_NHWC, target_NHWC = recon_NHWC[idx_K], target_NHWC[idx_K]
  lpips = jnp.mean(lpips_distance(lpips_params, recon_NHWC, target_NHWC))

  mse_norm, rms_state = rms_normalize(rms_state, "mse", mse, decay=rms_decay)
  lpips_norm, rms_state = rms_normalize(rms_state, "lpips", lpips, decay=rms_decay)
  loss = mse_norm + lpips_weight * lpips_norm

  mse_sg = jax.lax.stop_gradient(mse)
  metrics = {
      "loss": jax.lax.stop_gradient(loss),
      "mse": mse_sg,
      "lpips": jax.lax.stop_gradient(lpips),
      "mse_norm": jax.lax.stop_gradient(mse_norm),
      "lpips_norm": jax.lax.stop_gradient(lpips_norm),
      # PSNR of the reconstruction from the masked input, pixels in [0,1].
      "psnr": -10.0 * jnp.log10(jnp.maximum(mse_sg, 1e-10)),
      "mask_fraction": jnp.mean(out["mask_BTP"].astype(jnp.float32)),
  }
  return loss, (rms_state, metrics)
