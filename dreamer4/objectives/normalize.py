"""Running-RMS loss normaliser [P §3].

The paper divides every loss term by a running estimate of its root-mean-square
under stop-gradient, but does not give the estimator. Ours:

  ema_n   = decay * ema_{n-1} + (1 - decay) * sg(L_n)^2,     ema_0 = 0
  rms_n   = sqrt(ema_n / (1 - decay^n))                     (bias-corrected, Adam-style)
  L_norm  = L_n / max(eps, rms_n)

The state is updated with the current loss *before* normalising, so the first
step returns sign(L_1) (= 1 for positive losses). The gradient of L_norm is the
gradient of L_n scaled by 1 / max(eps, rms_n); rms_n carries no gradient.

State layout (a plain pytree, safe to checkpoint and to pass through jit):
  {name: {"ema_sq": float32 [], "count": int32 []}}
"""

from __future__ import annotations

from collections.abc import Iterable

import jax
import jax.numpy as jnp


def rms_init(names: Iterable[str]) -> dict:
  """Returns a fresh normaliser state for the given loss names."""
  return {name: {"ema_sq": jnp.zeros((), jnp.float32), "count": jnp.zeros((), jnp.int32)} for name in names}


def rms_normalize(state: dict, name: str, loss, decay: float = 0.99, eps: float = 1e-8):
  """Normalises a scalar loss by its running RMS.

  Args:
    state: Normaliser state from `rms_init`.
    name: Which entry of the state to use / update.
    loss: Scalar loss (differentiable).
    decay: EMA decay of the squared loss.
    eps: Floor of the RMS denominator.

  Returns:
    (normalized_loss, new_state); new_state differs from state only at `name`.
  """
  entry = state[name]
  loss_sg = jax.lax.stop_gradient(loss).astype(jnp.float32)
  count = entry["count"] + 1
  ema_sq = decay * entry["ema_sq"] + (1.0 - decay) * jnp.square(loss_sg)
  corrected = ema_sq / (1.0 - jnp.power(jnp.float32(decay), count.astype(jnp.float32)))
  rms = jnp.sqrt(corrected)
  normalized = loss / jnp.maximum(eps, rms)
  new_state = dict(state)
  new_state[name] = {"ema_sq": ema_sq, "count": count}
  return normalized, new_state


def rms_value(state: dict, name: str, decay: float = 0.99):
  """Current bias-corrected RMS estimate of `name` (0 before the first update)."""
  entry = state[name]
  count = entry["count"].astype(jnp.float32)
  corr = 1.0 - jnp.power(jnp.float32(decay), count)
  return jnp.where(count > 0, jnp.sqrt(entry["ema_sq"] / jnp.maximum(corr, 1e-30)), 0.0)
