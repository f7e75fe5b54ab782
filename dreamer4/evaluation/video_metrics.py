"""PSNR and SSIM of generated frames against ground truth, per horizon step (jit-friendly)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def mse_BT(a_BTHWC, b_BTHWC):
  """Mean squared pixel error for every frame."""
  return jnp.mean(jnp.square(a_BTHWC.astype(jnp.float32) - b_BTHWC.astype(jnp.float32)), axis=(-3, -2, -1))


def psnr_BT(a_BTHWC, b_BTHWC, max_val: float = 1.0):
  """PSNR in dB for every frame, images in [0, max_val] (capped at 100 dB over max_val**2 where equal)."""
  return 10.0 * jnp.log10(max_val**2 / jnp.maximum(mse_BT(a_BTHWC, b_BTHWC), 1e-10))


def _gaussian_kernel(size: int = 7, sigma: float = 1.5):
  x = jnp.arange(size, dtype=jnp.float32) - (size - 1) / 2
  g = jnp.exp(-0.5 * (x / sigma) ** 2)
  return g / g.sum()


def _blur(x_NHWC, kernel):
  """Separable Gaussian filter with 'valid' padding, per channel."""
  c = x_NHWC.shape[-1]
  kh = jnp.tile(kernel[:, None, None, None], (1, 1, 1, c))  # HWIO, depthwise
  kw = jnp.tile(kernel[None, :, None, None], (1, 1, 1, c))
  dn = ("NHWC", "HWIO", "NHWC")
  y = jax.lax.conv_general_dilated(x_NHWC, kh, (1, 1), "VALID", dimension_numbers=dn, feature_group_count=c)
  return jax.lax.conv_general_dilated(y, kw, (1, 1), "VALID", dimension_numbers=dn, feature_group_count=c)


def ssim_BT(a_BTHWC, b_BTHWC, max_val: float = 1.0, size: int = 7):
  """Mean SSIM (Wang et al. 2004; Gaussian window, sigma 1.5) for every frame."""
  B, T, H, W, C = a_BTHWC.shape
  size = min(size, H, W)
  k = _gaussian_kernel(size)
  a = a_BTHWC.reshape(B * T, H, W, C).astype(jnp.float32)
  b = b_BTHWC.reshape(B * T, H, W, C).astype(jnp.float32)
  c1, c2 = (0.01 * max_val) ** 2, (0.03 * max_val) ** 2
  mu_a, mu_b = _blur(a, k), _blur(b, k)
  var_a = _blur(a * a, k) - mu_a**2
  var_b = _blur(b * b, k) - mu_b**2
  cov = _blur(a * b, k) - mu_a * mu_b
  s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
  return s.mean(axis=(1, 2, 3)).reshape(B, T)


def masked_mean(x_BT, valid_BT, axis=None):
  """Mean of x over the frames where valid_BT is True (axis None: all; 0: per time step).

  NaN where no frame is valid (e.g. a horizon step past every window's episode end),
  rather than a made-up value.
  """
  v = jnp.asarray(valid_BT).astype(jnp.float32)
  n = jnp.sum(v, axis=axis)
  total = jnp.sum(jnp.asarray(x_BT, jnp.float32) * v, axis=axis)
  return jnp.where(n > 0, total / jnp.maximum(n, 1.0), jnp.nan)
