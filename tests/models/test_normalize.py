"""Tests for the running-RMS loss normaliser."""

import jax
import jax.numpy as jnp
import numpy as np

from dreamer4.objectives.normalize import rms_init, rms_normalize, rms_value


def test_hand_computed_sequence():
  # decay 0.5, losses 2, 4, 1:
  #   ema 2  -> corrected 2/0.5   = 4        -> rms 2        -> 2/2
  #   ema 9  -> corrected 9/0.75  = 12       -> rms 3.4641   -> 4/3.4641
  #   ema 5  -> corrected 5/0.875 = 5.714286 -> rms 2.390457 -> 1/2.390457
  state = rms_init(["a", "b"])
  expected = [1.0, 4.0 / np.sqrt(12.0), 1.0 / np.sqrt(5.0 / 0.875)]
  for loss, want in zip([2.0, 4.0, 1.0], expected):
    got, state = rms_normalize(state, "a", jnp.float32(loss), decay=0.5)
    np.testing.assert_allclose(got, want, rtol=1e-6)
  assert int(state["a"]["count"]) == 3 and int(state["b"]["count"]) == 0
  np.testing.assert_allclose(state["a"]["ema_sq"], 5.0, rtol=1e-6)
  np.testing.assert_allclose(rms_value(state, "a", decay=0.5), np.sqrt(5.0 / 0.875), rtol=1e-6)


def test_gradient_is_scaled_not_through_rms():
  state = rms_init(["a"])
  _, state = rms_normalize(state, "a", jnp.float32(2.0), decay=0.5)
  grad = jax.grad(lambda l: rms_normalize(state, "a", l, decay=0.5)[0])(jnp.float32(4.0))
  np.testing.assert_allclose(grad, 1.0 / np.sqrt(12.0), rtol=1e-6)


def test_zero_loss_is_finite_and_jittable():
  state = rms_init(["a"])
  got, state = jax.jit(lambda s, l: rms_normalize(s, "a", l))(state, jnp.float32(0.0))
  assert float(got) == 0.0 and np.isfinite(float(state["a"]["ema_sq"]))
