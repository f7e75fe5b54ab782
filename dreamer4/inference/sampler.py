"""Autoregressive generation with the shortcut dynamics model [P §3.2].

Frame by frame: a new frame starts from pure noise and takes `k` shortcut steps on
the grid tau = j/k (j = 0..k-1) with step d = 1/k, each the x-prediction flow step

  z <- z + d (z1_hat - z) / (1 - tau)  ==  z + (z1_hat - z) / (k - j).

At the last step the factor is exactly 1, so the frame becomes the model's last
clean prediction. The finished frame then enters the history corrupted to the
context level ("tau_ctx = 0.1", read as 10% noise: signal 1 - context_noise,
quantised to the k_max grid), with the noise drawn once, when it enters; primed
context frames are corrupted the same way, to the same level, with the same d_min
key (one convention for both, so the cached and uncached paths key context alike).

No KV cache yet: every step recomputes a fixed window of `window` frames that ends
at the frame being generated, cut out of a buffer that holds all C + horizon frames
(latents are small; the buffer keeps shapes static). Early on, when fewer frames
exist, the window starts at frame 0 and the frame being generated sits inside it;
the unfilled frames after it cannot influence it because attention is causal in
time. Each step is one model pass; the history needs no separate re-encode pass.

Index conventions are those of `dreamer4.models.dynamics` (tau index = tau * k_max,
d index e with d = 2**-e).

Shape letters: B batch, C context frames, H generated frames (horizon), T = C + H
all frames, W window, N latent tokens, L latent channels.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from dreamer4.models.dynamics import d_min_index, log2_exact

# apply_fn(z_BWNL, tau_idx_BW, d_idx_BW, actions_window) -> z1_hat_BWNL, where
# actions_window is the caller's action pytree cut to the same W frames as z.
ApplyFn = Callable[[jax.Array, jax.Array, jax.Array, Any], jax.Array]


def context_tau_index(context_noise: float, k_max: int) -> int:
  """Grid index of the history signal level round((1 - context_noise) * k_max).

  With k_max = 64 and noise 0.1 this is 58 (tau = 0.906). The corruption applied to
  history frames uses exactly this quantised level, so the embedding fed matches.
  """
  if not 0.0 <= context_noise <= 1.0:
    raise ValueError(f"context_noise must be in [0, 1], got {context_noise}")
  return int(round((1.0 - context_noise) * k_max))


def generate(
  apply_fn: ApplyFn,
  context_z_BCNL,
  actions,
  rng,
  *,
  horizon: int,
  k: int = 4,
  k_max: int,
  context_noise: float = 0.1,
  window: int,
) -> dict:
  """Generates `horizon` frames after `context_z_BCNL`.

  jit-friendly: the shapes are static and the loops are `lax.fori_loop`s; wrap it
  in jax.jit / nnx.jit with the keyword arguments static.

  Args:
    apply_fn: See `ApplyFn` (e.g. `dynamics.make_sampling_fn(model)`).
    context_z_BCNL: Clean latents of the C primed frames (C may be 0).
    actions: Pytree whose leaves are [B, C + horizon, ...]: per frame, the action
      that led to it. Cut to the current window for every call of apply_fn.
    rng: PRNG key.
    horizon: Number of frames to generate.
    k: Shortcut steps per frame (power of two dividing k_max); d = 1/k.
    k_max: The model's finest grid.
    context_noise: Noise share of history frames (0 = clean history, tau = 1).
    window: Frames per model call, the generated frame included. Use at most the
      model's `context` (otherwise the model's own window masks the excess).

  Returns:
    dict with z_BHNL (the generated clean frames, float32) and history_BTNL (all
    frames as the model saw them as history: corrupted context, then corrupted
    generated frames).
  """
  B, C, N, L = context_z_BCNL.shape
  T = C + horizon
  if horizon < 1:
    raise ValueError(f"horizon must be >= 1, got {horizon}")
  if window < 1:
    raise ValueError(f"window must be >= 1, got {window}")
  log2_exact(k_max)  # validates k_max
  log2_k = log2_exact(k, "steps per frame k")
  if k > k_max:
    raise ValueError(f"steps per frame k={k} exceeds k_max={k_max}")
  for leaf in jax.tree.leaves(actions):
    if leaf.shape[:2] != (B, T):
      raise ValueError(f"action leaves must be [B={B}, C+horizon={T}, ...], got {leaf.shape}")
  W = min(window, T)
  ctx_idx = context_tau_index(context_noise, k_max)
  ctx_signal = ctx_idx / k_max  # the quantised level actually applied
  d_min_idx = d_min_index(k_max)
  grid = k_max // k  # tau index of step j is j * grid

  def corrupt(z, noise):
    return (1.0 - ctx_signal) * noise + ctx_signal * z

  prime_rng, gen_rng = jax.random.split(rng)
  context_z_BCNL = context_z_BCNL.astype(jnp.float32)
  history_BTNL = jnp.zeros((B, T, N, L), jnp.float32)
  if C:
    prime_noise = jax.random.normal(prime_rng, context_z_BCNL.shape, jnp.float32)
    history_BTNL = history_BTNL.at[:, :C].set(corrupt(context_z_BCNL, prime_noise))
  out_BHNL = jnp.zeros((B, horizon, N, L), jnp.float32)
  pos_W = jnp.arange(W)

  def frame_body(h, carry):
    history_BTNL, out_BHNL = carry
    p = C + h  # absolute index of the frame being generated
    start = jnp.clip(p - W + 1, 0, T - W)
    here = p - start  # its slot inside the window
    hist_BWNL = jax.lax.dynamic_slice_in_dim(history_BTNL, start, W, axis=1)
    actions_win = jax.tree.map(lambda a: jax.lax.dynamic_slice_in_dim(a, start, W, axis=1), actions)
    is_here_W = pos_W == here
    d_idx_BW = jnp.broadcast_to(jnp.where(is_here_W, log2_k, d_min_idx), (B, W)).astype(jnp.int32)
    init_rng, ctx_rng = jax.random.split(jax.random.fold_in(gen_rng, h))
    z_BNL = jax.random.normal(init_rng, (B, N, L), jnp.float32)

    def step_body(j, z_BNL):
      z_BWNL = jax.lax.dynamic_update_slice_in_dim(hist_BWNL, z_BNL[:, None], here, axis=1)
      tau_idx_W = jnp.where(is_here_W, j * grid, ctx_idx)
      tau_idx_BW = jnp.broadcast_to(tau_idx_W, (B, W)).astype(jnp.int32)
      z1_hat_BWNL = apply_fn(z_BWNL, tau_idx_BW, d_idx_BW, actions_win)
      z1_hat_BNL = jax.lax.dynamic_index_in_dim(z1_hat_BWNL, here, axis=1, keepdims=False)
      # d / (1 - tau) = 1 / (k - j), exactly 1 at the last step. Written as a lerp
      # so that the last step returns z1_hat bit-exactly (z + (z1_hat - z) would not).
      a = 1.0 / jnp.asarray(k - j, jnp.float32)
      return (1.0 - a) * z_BNL + a * z1_hat_BNL.astype(jnp.float32)

    z_BNL = jax.lax.fori_loop(0, k, step_body, z_BNL)
    out_BHNL = jax.lax.dynamic_update_slice_in_dim(out_BHNL, z_BNL[:, None], h, axis=1)
    # The frame's history noise is drawn once, here, so every later step sees the
    # same corrupted frame.
    noise_BNL = jax.random.normal(ctx_rng, z_BNL.shape, jnp.float32)
    history_BTNL = jax.lax.dynamic_update_slice_in_dim(history_BTNL, corrupt(z_BNL, noise_BNL)[:, None], p, axis=1)
    return history_BTNL, out_BHNL

  history_BTNL, out_BHNL = jax.lax.fori_loop(0, horizon, frame_body, (history_BTNL, out_BHNL))
  return {"z_BHNL": out_BHNL, "history_BTNL": history_BTNL}
