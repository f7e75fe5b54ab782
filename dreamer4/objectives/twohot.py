"""Symlog scalars as distributions over bins: two-hot.

[P §3.3]: reward and value heads use "symexp twohot, following Dreamer 3". The
paper gives no bin count or range; the defaults here (255 bins uniform on [-20, 20] in
symlog space) are Dreamer 3's, not the paper's.

Shape letters: N any leading shape, K number of bins.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


def symlog(x):
  """sign(x) * log(1 + |x|): compresses large magnitudes, identity-like near 0."""
  return jnp.sign(x) * jnp.log1p(jnp.abs(x))


def symexp(x):
  """Inverse of `symlog`: sign(x) * (exp(|x|) - 1)."""
  return jnp.sign(x) * jnp.expm1(jnp.abs(x))


@dataclasses.dataclass(frozen=True)
class TwoHot:
  """Two-hot encoding of symlog(value) on bins uniform in symlog space.

  Attributes:
    num_bins: number of bins K (Dreamer 3: 255; not stated by the paper).
    low: lowest bin centre, in symlog space.
    high: highest bin centre, in symlog space.
  """

  num_bins: int = 255
  low: float = -20.0
  high: float = 20.0

  @property
  def bins_K(self):
    return jnp.linspace(self.low, self.high, self.num_bins, dtype=jnp.float32)

  def encode(self, value_N):
    """Target probabilities [N, K]: weight split between the two bins around symlog(value).

    Values outside the range are clipped to the end bins (all weight on one bin).
    """
    bins = self.bins_K
    y = jnp.clip(symlog(value_N.astype(jnp.float32)), self.low, self.high)
    step = (self.high - self.low) / (self.num_bins - 1)
    pos = (y - self.low) / step
    below = jnp.clip(jnp.floor(pos), 0, self.num_bins - 1).astype(jnp.int32)
    above = jnp.clip(below + 1, 0, self.num_bins - 1)
    # Interpolation weight from the actual bin centres so that decode(encode(x)) is exact.
    w_above = jnp.clip((y - bins[below]) / step, 0.0, 1.0)
    w_above = jnp.where(above == below, 0.0, w_above)
    return (
      jax.nn.one_hot(below, self.num_bins) * (1.0 - w_above)[..., None]
      + jax.nn.one_hot(above, self.num_bins) * w_above[..., None]
    )

  def decode(self, logits_NK):
    """Point estimate: symexp of the expected bin (in symlog space) under softmax(logits)."""
    probs_NK = jax.nn.softmax(logits_NK.astype(jnp.float32), axis=-1)
    return symexp(jnp.sum(probs_NK * self.bins_K, axis=-1))

  def loss(self, logits_NK, target_N):
    """Cross-entropy [N] between softmax(logits) and the encoded target (target is not differentiated)."""
    target_NK = jax.lax.stop_gradient(self.encode(target_N))
    return -jnp.sum(target_NK * jax.nn.log_softmax(logits_NK.astype(jnp.float32), axis=-1), axis=-1)
