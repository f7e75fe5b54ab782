"""KV-cached frame-by-frame decoding for the dynamics model [P §3.2].

Only time layers read past frames, so a cache of their keys/values for the last
W - 1 finished frames is all the state that generation needs: a new frame runs the
space layers on itself alone and its time layers attend over cache + itself.

Layout: one ring buffer per time layer, k/v [B, S, M, G, K] each (`k_LBSMGK`
stacks the L of them) with M = W - 1 slots (L time layers, S tokens per frame,
G kv heads, K head dim), plus the absolute frame index held by each slot
(-1 = empty) and the number of frames committed so far (= absolute index of the
frame being generated). All shapes are static, so one jitted step serves every
frame. A scanned transformer has one time layer per layer group, so L is also its
group axis: its decode scans the stacked group parameters and the stacked cache
together.

Convention (one for primed and generated frames, so both are keyed alike in the
cache): the K denoising steps of a frame share the cache and never write it;
the current frame's own k/v are recomputed at each step. When a frame is finished
(or primed) it is corrupted ONCE to the context level, tau index
round((1 - context_noise) * k_max) with d = d_min and noise drawn once, re-encoded
against the cache, and its time-layer k/v are written. `commit_frame` is the one
function that does this for both; `generate_frame` runs a frame's k denoising
passes and its commit as one loop (what `inference.world.World` steps).

RoPE: a frame's keys are cached already rotated, at the frame's absolute index
s, and the frame being decoded is rotated at its own index p (`transformer.rope_at`,
exact at any index). RoPE only sees offsets, and p - s are the offsets of the
window-relative positions `sampler.generate` uses (its window starts at
max(p - W + 1, 0)), so the attention is the same; but nothing cached moves when p
does. So per frame only the cache reads grow with the window: no key is rotated
again, each pass reads every layer's buffers in place (`frame_view`, in their
stored order: `transformer.Block.decode_time`) and the new frame is written into
its slot in place (the jitted step donates the old cache).

Exactness vs `sampler.generate`: generate recomputes the whole window every
frame, so in ITS pass the oldest window frame sees no earlier frames, while a
cached frame's k/v were computed when that frame was new, seeing its own full
window. With one time layer these coincide (the time-layer
inputs are per-frame); with several time layers and more than W frames they
differ, and the cached path equals a full-history recomputation under the model's
sliding time mask (absolute positions) instead. Tests check both.

Shape letters: B batch, N latent tokens, L latent channels (in z) or time layers
(in k/v), S tokens per frame, M cache slots, G kv heads, K head dim, C context.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from data_pipelines.envs.base import Action
from dreamer4.errors import ConfigError
from dreamer4.inference.sampler import context_tau_index
from dreamer4.models import transformer as tr
from dreamer4.models.dynamics import Dynamics, d_min_index, log2_exact


class KVCache(NamedTuple):
  """Time-layer keys/values of the last M committed frames (a pytree).

  Attributes:
    k_L: Keys rotated at their frame's absolute index (module doc), one
      [B, S, M, G, K] array per time layer (a tuple).
    v_L: Values, likewise.
    frame_M: int32 absolute frame index held by each slot, -1 when empty.
    length: int32 scalar, frames committed so far (the next frame's index).

  One array per layer, not one stacked array: XLA reads a whole array in place,
  but a layer's slice of a stacked one only through a copy, which cost every frame
  a copy of the whole cache.
  """

  k_L: tuple[jax.Array, ...]
  v_L: tuple[jax.Array, ...]
  frame_M: jax.Array
  length: jax.Array

  @property
  def slots(self) -> int:
    return self.frame_M.shape[0]

  @property
  def k_LBSMGK(self) -> jax.Array:
    """The keys stacked over the time layers, [L, B, S, M, G, K] (a copy)."""
    return jnp.stack(self.k_L)

  @property
  def v_LBSMGK(self) -> jax.Array:
    """The values stacked likewise."""
    return jnp.stack(self.v_L)


def cache_window(model: Dynamics, window: int | None = None) -> int:
  """Frames one decoded frame reads (itself included); defaults to model.context."""
  W = int(window if window is not None else model.context)
  if W < 1:
    raise ConfigError(
      f"KV-cached decoding needs a finite window >= 1, got {W} (model.context="
      f"{model.context}); pass window= explicitly for an unlimited-context model."
    )
  if model.context and W > model.context:
    raise ConfigError(f"window={W} exceeds the model's time window context={model.context}")
  return W


def init_cache(model: Dynamics, batch: int, window: int | None = None) -> KVCache:
  """An empty cache for `batch` sequences and a window of `window` frames."""
  M = cache_window(model, window) - 1
  tf = model.transformer
  num_time = len(tf.time_layer_indices)
  S = model.layout.num_tokens
  zeros = tuple(jnp.zeros((batch, S, M, tf.num_kv_heads, tf.head_dim), model.dtype) for _ in range(num_time))
  return KVCache(zeros, zeros, jnp.full((M,), -1, jnp.int32), jnp.zeros((), jnp.int32))


def _frame_axis(action: Action) -> Action:
  """Adds the T = 1 axis to every field of one frame's Action [B]."""
  return jax.tree.map(lambda a: jnp.asarray(a)[:, None], action)


class FrameView(NamedTuple):
  """The cache as every pass of one frame reads it (`frame_view`).

  Attributes:
    k: Rotated keys (as cached).
    v: Values.
  For an unscanned transformer both are tuples of per-time-layer arrays
  [B, S, M, G, K], the cache's own buffers; for a scanned one, the stacked
  [L, B, S, M, G, K] arrays that its layer scan slices.
  """

  k: jax.Array | tuple[jax.Array, ...]
  v: jax.Array | tuple[jax.Array, ...]


def frame_view(model: Dynamics, cache: KVCache) -> FrameView:
  """The cache as `Transformer.decode` reads it, made once for the passes of a frame.

  Unscanned: the cache's per-layer buffers as they are (no work). Scanned: stacked
  once here, outside the denoising loop.
  """
  if model.transformer.scan_layers:
    return FrameView(cache.k_LBSMGK, cache.v_LBSMGK)
  return FrameView(cache.k_L, cache.v_L)


def frame_forward(
  model: Dynamics,
  cache: KVCache,
  z_BNL,
  tau_idx_B,
  d_idx_B,
  action: Action,
  tasks_B=None,
  with_agent: bool = False,
  view: FrameView | None = None,
):
  """One pass of the current frame against the cache (the cache is not written).

  Args:
    model: The dynamics model.
    cache: The cache of finished frames.
    z_BNL: Current (corrupted) latents of the frame.
    tau_idx_B: int32 signal-level index per row (or a scalar).
    d_idx_B: int32 step-size index per row (or a scalar).
    action: This frame's Action [B] (data_pipelines/envs/base.py).
    tasks_B: Optional int32 task ids for the agent tokens (phase 2+ models).
    with_agent: Also return the agent tokens' outputs [B, K_agent, D].
    view: Optional `frame_view(model, cache)`, shared by the passes of one frame.

  Returns:
    (z1_hat_BNL float32, k_LBSGK, v_LBSGK): the clean estimate and the frame's
    time-layer keys (unrotated)/values at this (tau, d) key; plus agent_BKD with
    `with_agent`.
  """
  B = z_BNL.shape[0]
  act = _frame_axis(action)
  tau_idx_B1 = jnp.broadcast_to(jnp.asarray(tau_idx_B, jnp.int32), (B,))[:, None]
  d_idx_B1 = jnp.broadcast_to(jnp.asarray(d_idx_B, jnp.int32), (B,))[:, None]
  x_B1SD = model.embed(
    z_BNL[:, None],
    tau_idx_B1,
    d_idx_B1,
    act,
    tasks_BT=None if tasks_B is None else jnp.asarray(tasks_B, jnp.int32)[:, None],
  )
  if view is None:
    view = frame_view(model, cache)
  y_BSD, k_LBSGK, v_LBSGK = model.transformer.decode(
    x_B1SD[:, 0],
    space_mask_SS=tr.space_mask(model.layout, tr.dynamics_rule(model.layout.names)),
    cache_k_LBSMGK=view.k,
    cache_v_LBSMGK=view.v,
    cache_pos_M=cache.frame_M,  # what the cached keys carry (read only by keys_rotated=False)
    cache_valid_M=cache.frame_M >= 0,
    query_pos=cache.length,
    keys_rotated=True,
  )
  z1_hat_BNL = model.readout(y_BSD[:, None])[:, 0]
  if with_agent:
    return z1_hat_BNL, k_LBSGK, v_LBSGK, y_BSD[:, model.layout.slice("agent")]
  return z1_hat_BNL, k_LBSGK, v_LBSGK


def write_frame(cache: KVCache, k_LBSGK, v_LBSGK) -> KVCache:
  """Writes a finished frame's k/v (keys already rotated) into the ring slot of the oldest frame."""
  M = cache.slots
  if M == 0:  # window 1: frames never read the past
    return cache._replace(length=cache.length + 1)
  slot = cache.length % M

  def put(buf_BSMGK, new_BSGK):
    return jax.lax.dynamic_update_index_in_dim(buf_BSMGK, new_BSGK.astype(buf_BSMGK.dtype), slot, axis=2)

  k = tuple(put(buf, k_LBSGK[i]) for i, buf in enumerate(cache.k_L))
  v = tuple(put(buf, v_LBSGK[i]) for i, buf in enumerate(cache.v_L))
  frame_M = cache.frame_M.at[slot].set(cache.length)
  return KVCache(k, v, frame_M, cache.length + 1)


def context_keys(model: Dynamics, context_noise: float) -> tuple[int, int, float]:
  """(tau index, d index, signal level) every history frame is encoded with."""
  ctx_idx = context_tau_index(context_noise, model.k_max)
  return ctx_idx, d_min_index(model.k_max), ctx_idx / model.k_max


def commit_frame(
  model: Dynamics,
  cache: KVCache,
  z_BNL,
  noise_BNL,
  action: Action,
  *,
  context_noise: float,
  tasks_B=None,
  with_agent: bool = False,
):
  """Corrupts a finished (or primed) frame to the context level and caches it.

  The one entry point for both primed and generated frames, so both use the same
  keys: tau index round((1 - context_noise) * k_max), d = d_min, and the given
  noise (drawn once by the caller). The keys are cached rotated at the frame's
  absolute index, `cache.length`.

  With `with_agent` it returns (cache, agent_BKD): the agent tokens' outputs of this
  pass. This is where the agent reads a frame (phase 2 trains its heads on the same
  context-level corruption; see dreamer4/phases/agent.py).
  """
  ctx_idx, d_min_idx, signal = context_keys(model, context_noise)
  z_ctx_BNL = (1.0 - signal) * noise_BNL + signal * z_BNL.astype(jnp.float32)
  out = frame_forward(model, cache, z_ctx_BNL, ctx_idx, d_min_idx, action, tasks_B=tasks_B, with_agent=with_agent)
  cache = write_frame(cache, _keys_to_cache(model, cache, out[1]), out[2])
  return (cache, out[3]) if with_agent else cache


def _keys_to_cache(model: Dynamics, cache: KVCache, k_LBSGK):
  """The next frame's keys [L, B, S, G, K] rotated at its absolute index, as cached."""
  if not cache.k_L:
    return k_LBSGK
  position_1 = jnp.reshape(cache.length, (1,))
  return model.transformer.rotate_cached_keys(k_LBSGK[:, :, :, None], position_1)[:, :, :, 0]


def denoise_frame(model: Dynamics, cache: KVCache, z0_BNL, action: Action, *, k: int):
  """Takes `k` shortcut steps from noise z0 on the grid tau = j/k with d = 1/k.

  The same update as `sampler.generate`: z <- z + (z1_hat - z) / (k - j), written
  as a lerp so the last step returns z1_hat exactly. The k steps read one
  `frame_view`, made outside the loop.
  """
  log2_k, grid = _step_grid(model, k)
  view = frame_view(model, cache)

  def body(j, z_BNL):
    z1_hat_BNL, _, _ = frame_forward(model, cache, z_BNL, j * grid, log2_k, action, view=view)
    return _shortcut_step(z_BNL, z1_hat_BNL, j, k)

  return jax.lax.fori_loop(0, k, body, z0_BNL.astype(jnp.float32))


def _step_grid(model: Dynamics, k: int) -> tuple[int, int]:
  """(d index of d = 1/k, tau-index stride k_max / k) for k steps per frame."""
  log2_k = log2_exact(k, "steps per frame k")
  if k > model.k_max:
    raise ValueError(f"steps per frame k={k} exceeds k_max={model.k_max}")
  return log2_k, model.k_max // k


def _shortcut_step(z_BNL, z1_hat_BNL, j, k: int):
  """Step j of k: z + (z1_hat - z) / (k - j) as a lerp (step k - 1 returns z1_hat exactly)."""
  a = 1.0 / jnp.asarray(k - j, jnp.float32)
  return (1.0 - a) * z_BNL + a * z1_hat_BNL


def generate_frame(model: Dynamics, cache: KVCache, z0_BNL, noise_BNL, action: Action, *, k: int, context_noise: float):
  """`denoise_frame` then `commit_frame` (with `noise_BNL`), as ONE loop of k + 1 passes.

  Returns (z_BNL, cache): the generated clean latents and the cache with the frame
  committed. The same passes, inputs and results as the two calls. One loop
  because a pass that reads the cache after a loop that read it made XLA copy
  the cache (the loop may own its inputs' buffers, and the read and the in-place
  write of the new frame come after it); reads inside the loop need no copy.
  """
  log2_k, grid = _step_grid(model, k)
  ctx_idx, d_min_idx, signal = context_keys(model, context_noise)
  view = frame_view(model, cache)
  tf = model.transformer
  kv_shape = (len(cache.k_L), z0_BNL.shape[0], model.layout.num_tokens, tf.num_kv_heads, tf.head_dim)

  def body(j, carry):
    z_BNL, _, _ = carry
    commit = j == k  # the last pass: the finished frame at the context level, as commit_frame
    z_in_BNL = jnp.where(commit, (1.0 - signal) * noise_BNL + signal * z_BNL, z_BNL)
    tau_idx = jnp.where(commit, ctx_idx, j * grid)
    d_idx = jnp.where(commit, d_min_idx, log2_k)
    z1_hat_BNL, k_LBSGK, v_LBSGK = frame_forward(model, cache, z_in_BNL, tau_idx, d_idx, action, view=view)
    z_BNL = jnp.where(commit, z_BNL, _shortcut_step(z_BNL, z1_hat_BNL, jnp.minimum(j, k - 1), k))
    return z_BNL, k_LBSGK.astype(model.dtype), v_LBSGK.astype(model.dtype)

  empty = jnp.zeros(kv_shape, model.dtype)
  z_BNL, k_LBSGK, v_LBSGK = jax.lax.fori_loop(0, k + 1, body, (z0_BNL.astype(jnp.float32), empty, empty))
  return z_BNL, write_frame(cache, _keys_to_cache(model, cache, k_LBSGK), v_LBSGK)


def prime(
  model: Dynamics,
  cache: KVCache,
  context_z_BCNL,
  context_actions: Action,
  noise_BCNL,
  *,
  context_noise: float,
  tasks_B=None,
  with_agent: bool = False,
):
  """Commits C context frames in order (a lax.scan of `commit_frame`); `context_actions` is an Action [B, C].

  With `with_agent` (C >= 1) it returns (cache, agent_BKD of the last context frame).
  """
  if context_z_BCNL.shape[1] == 0:
    if with_agent:
      raise ValueError("prime(with_agent=True) needs at least one context frame")
    return cache
  swap = lambda a: jnp.swapaxes(jnp.asarray(a), 0, 1)
  xs = (swap(context_z_BCNL), swap(noise_BCNL), jax.tree.map(swap, context_actions))

  def body(cache, x):
    z_BNL, noise_BNL, action = x
    out = commit_frame(
      model, cache, z_BNL, noise_BNL, action, context_noise=context_noise, tasks_B=tasks_B, with_agent=with_agent
    )
    return (out[0], out[1]) if with_agent else (out, None)

  cache, agents = jax.lax.scan(body, cache, xs)
  return (cache, agents[-1]) if with_agent else cache
