"""Tests for the offline LPIPS wrapper."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dreamer4.models.lpips import load_lpips_params, lpips_distance


@pytest.fixture(scope="module")
def params():
  return jax.device_put(load_lpips_params())


def _images(N=3, size=32, seed=0):
  # Smooth random images: upsampled low-res noise, so blur is a visible change.
  low = jax.random.uniform(jax.random.key(seed), (N, size // 4, size // 4, 3))
  return jax.image.resize(low, (N, size, size, 3), "linear")


def test_lpips_properties(params):
  fn = jax.jit(lpips_distance)
  a = _images()
  # Sharper images make the blur/noise comparison unambiguous.
  a = jnp.clip((a - 0.5) * 3 + 0.5, 0, 1)
  a = jnp.where(a > 0.5, 1.0, 0.0) * 0.8 + 0.1 * a
  noisy = jnp.clip(a + 0.02 * jax.random.normal(jax.random.key(1), a.shape), 0, 1)
  box = jnp.ones((5, 5, 1, 1)) / 25.0
  blurred = jax.vmap(
    lambda c: jax.lax.conv_general_dilated(
      c[..., None], box, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )[..., 0],
    in_axes=-1,
    out_axes=-1,
  )(a)
  d_same = np.asarray(fn(params, a, a))
  d_noise = np.asarray(fn(params, a, noisy))
  d_blur = np.asarray(fn(params, a, blurred))
  d_rev = np.asarray(fn(params, blurred, a))
  assert d_same.shape == (3,)
  assert np.all(np.abs(d_same) < 1e-6)
  assert np.all(d_noise < d_blur), (d_noise, d_blur)
  np.testing.assert_allclose(d_blur, d_rev, atol=1e-6)
  assert np.all(d_blur > 0)
