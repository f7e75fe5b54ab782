"""Tests for symlog/symexp, two-hot and HL-Gauss encoders."""

import jax
import jax.numpy as jnp
import numpy as np

from dreamer4.objectives.twohot import TwoHot, symexp, symlog


def _logits(probs):
  # softmax(log p) == p; the floor only keeps log finite for empty bins.
  return jnp.log(jnp.maximum(probs, 1e-30))


def test_symlog_symexp_inverse():
  x = jnp.array([-1e4, -100.0, -2.5, -1.0, -1e-3, 0.0, 1e-3, 0.5, 3.0, 1e5])
  np.testing.assert_allclose(symexp(symlog(x)), x, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(symlog(symexp(x[2:-2])), x[2:-2], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(symlog(jnp.array([np.e - 1.0, -(np.e - 1.0)])), [1.0, -1.0], rtol=1e-6)


def test_twohot_exact_at_bin_centres():
  enc = TwoHot(num_bins=11, low=-5.0, high=5.0)
  centres = symexp(enc.bins_K)
  probs = enc.encode(centres)
  np.testing.assert_allclose(probs, np.eye(11), atol=1e-6)
  np.testing.assert_allclose(enc.decode(_logits(probs)), centres, rtol=1e-5)


def test_twohot_round_trip_and_probs():
  enc = TwoHot()  # 255 bins on [-20, 20] (Dreamer 3's default)
  x = jnp.array([-300.0, -7.3, -1.0, -0.01, 0.0, 0.02, 0.4, 1.0, 12.5, 999.0])
  probs = enc.encode(x)
  assert probs.shape == (10, 255)
  np.testing.assert_allclose(jnp.sum(probs, -1), 1.0, atol=1e-6)
  assert bool(jnp.all(probs >= 0))
  assert int(jnp.max(jnp.sum(probs > 0, -1))) <= 2
  # Linear interpolation between neighbouring centres: exact in symlog space up to fp.
  np.testing.assert_allclose(symlog(enc.decode(_logits(probs))), symlog(x), atol=1e-5)
  # Hand example: 3 bins at symlog -1, 0, 1; symlog(x) = 0.25 splits 0.75 / 0.25.
  small = TwoHot(num_bins=3, low=-1.0, high=1.0)
  np.testing.assert_allclose(small.encode(symexp(jnp.array(0.25))), [0.0, 0.75, 0.25], atol=1e-6)
  # Out of range clips to the end bin.
  np.testing.assert_allclose(small.encode(jnp.array(1e6)), [0.0, 0.0, 1.0], atol=1e-6)


def test_twohot_loss_is_cross_entropy():
  enc = TwoHot(num_bins=5, low=-2.0, high=2.0)
  target = symexp(jnp.array([0.3, -1.5]))
  logits = jnp.array([[0.1, -0.2, 0.5, 0.0, 1.0], [2.0, 0.0, -1.0, 0.3, 0.3]])
  expected = -jnp.sum(enc.encode(target) * jax.nn.log_softmax(logits), -1)
  np.testing.assert_allclose(enc.loss(logits, target), expected, rtol=1e-6)
  # d CE / d logits = softmax - target, and no gradient reaches the target.
  g = jax.grad(lambda lg: jnp.sum(enc.loss(lg, target)))(logits)
  np.testing.assert_allclose(g, jax.nn.softmax(logits) - enc.encode(target), atol=1e-6)
  gt = jax.grad(lambda t: jnp.sum(enc.loss(logits, t)))(target)
  np.testing.assert_allclose(gt, 0.0)
