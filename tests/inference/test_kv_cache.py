"""Tests for the time-layer KV cache and Transformer.decode."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from data_pipelines.envs.base import Action, ActionComponent, ActionSpec
from dreamer4.inference import kv_cache
from dreamer4.models import transformer as tr
from dreamer4.models.dynamics import Dynamics

B, T, S, D = 2, 5, 3, 32


def _transformer(depth=4, time_every=2, num_kv_heads=1):
  with nnx.use_eager_sharding(False):
    return tr.Transformer(
      width=D,
      depth=depth,
      num_heads=2,
      num_kv_heads=num_kv_heads,
      head_dim=16,
      mlp_dim=64,
      time_every=time_every,
      softcap=50.0,
      rngs=nnx.Rngs(0),
    )


def test_decode_with_exact_history_equals_full_pass():
  # Feed each frame in turn, caching its time-layer k/v (absolute positions): the
  # last frame's output must equal the full causal pass (one time layer, so the
  # cached k/v of earlier frames equal those of the full pass).
  model = _transformer(depth=2, time_every=2, num_kv_heads=2)
  x = jax.random.normal(jax.random.key(1), (B, T, S, D))
  mask_SS = np.ones((S, S), bool)
  full = model(x, space_mask_SS=mask_SS, time_mask_BTT=tr.time_mask(T))
  k = jnp.zeros((1, B, S, T - 1, 2, 16))
  v = jnp.zeros_like(k)
  for t in range(T):
    y, k_new, v_new = model.decode(
      x[:, t],
      space_mask_SS=mask_SS,
      cache_k_LBSMGK=k,
      cache_v_LBSMGK=v,
      cache_pos_M=jnp.arange(T - 1),
      cache_valid_M=jnp.arange(T - 1) < t,
      query_pos=t,
    )
    np.testing.assert_allclose(np.asarray(y), np.asarray(full[:, t]), atol=1e-5, rtol=1e-5)
    if t < T - 1:
      k, v = k.at[:, :, :, t].set(k_new), v.at[:, :, :, t].set(v_new)


def test_decode_is_shift_invariant_in_positions():
  # RoPE is relative: shifting all positions by a constant leaves the output alone.
  model = _transformer()
  x = jax.random.normal(jax.random.key(2), (B, S, D))
  k = jax.random.normal(jax.random.key(3), (2, B, S, 3, 1, 16))
  v = jax.random.normal(jax.random.key(4), (2, B, S, 3, 1, 16))
  kw = dict(
    space_mask_SS=np.ones((S, S), bool),
    cache_k_LBSMGK=k,
    cache_v_LBSMGK=v,
    cache_valid_M=jnp.array([True, False, True]),
  )
  y0, _, _ = model.decode(x, cache_pos_M=jnp.array([0, 1, 2]), query_pos=3, **kw)
  y1, _, _ = model.decode(x, cache_pos_M=jnp.array([40, 41, 42]), query_pos=43, **kw)
  np.testing.assert_allclose(np.asarray(y0), np.asarray(y1), atol=1e-4, rtol=1e-4)
  # And an invalid slot is really ignored.
  k2 = k.at[:, :, :, 1].set(100.0)
  y2, _, _ = model.decode(x, cache_pos_M=jnp.array([0, 1, 2]), query_pos=3, **{**kw, "cache_k_LBSMGK": k2})
  np.testing.assert_array_equal(np.asarray(y0), np.asarray(y2))


def test_ring_buffer_wraps_and_tracks_frames():
  model = _small_dynamics(depth=2, num_heads=2, num_kv_heads=1, softcap=None)
  cache = kv_cache.init_cache(model, batch=2)
  assert cache.k_LBSMGK.shape == (1, 2, model.layout.num_tokens, 3, 1, 16)
  for f in range(5):
    k_new = jnp.full((1, 2, model.layout.num_tokens, 1, 16), float(f))
    cache = kv_cache.write_frame(cache, k_new, k_new)
  assert int(cache.length) == 5
  np.testing.assert_array_equal(np.asarray(cache.frame_M), [3, 4, 2])  # slot = frame % 3
  np.testing.assert_array_equal(np.asarray(cache.k_LBSMGK[0, 0, 0, :, 0, 0]), [3.0, 4.0, 2.0])


def _small_dynamics(**sizes):
  """A small dynamics model (context 4) with a 3-way discrete action; `sizes` sets depth,
  heads, kv heads and the soft cap."""
  spec = ActionSpec((ActionComponent("move", "discrete", 3),))
  kw = dict(num_latents=4, latent_dim=2, group=2, num_registers=1, action_spec=spec, k_max=8, width=32)
  kw.update(head_dim=16, mlp_dim=64, time_every=2, context=4, rngs=nnx.Rngs(0), **sizes)
  with nnx.use_eager_sharding(False):
    return Dynamics(**kw)


def _two_head_dynamics():
  """Two time layers with two kv heads (the grouped decode reads every kv head)."""
  return _small_dynamics(depth=4, num_heads=4, num_kv_heads=2, softcap=50.0)


def _rollout_inputs(seed: int, B: int, C: int, N: int = 4, L: int = 2):
  """Random labelled actions for C + 1 frames, C context latents and their noise, the last
  frame's action, and two [B, N, L] draws (the new frame's start and its noise)."""
  keys = jax.random.split(jax.random.key(seed), 5)
  acts = Action.labelled_from(jax.random.randint(keys[0], (B, C + 1, 1), 0, 3))
  ctx, noise = jax.random.normal(keys[1], (B, C, N, L)), jax.random.normal(keys[2], (B, C, N, L))
  action = jax.tree.map(lambda a: a[:, C], acts)
  return acts, ctx, noise, action, jax.random.normal(keys[3], (B, N, L)), jax.random.normal(keys[4], (B, N, L))


def test_cached_frames_are_the_same_at_any_absolute_frame_index():
  # Keys are cached rotated at their absolute frame index: a rollout that is far
  # along (frame 3_000_001 on) must generate what a fresh one does (ring wrapped,
  # two kv heads), up to float rounding.
  model = _two_head_dynamics()
  B, C = 2, 5
  acts, ctx, noise, action, z0, _ = _rollout_inputs(5, B, C)

  @jax.jit
  def frame(start):
    cache = kv_cache.init_cache(model, B)._replace(length=jnp.asarray(start, jnp.int32))
    cache = kv_cache.prime(model, cache, ctx, jax.tree.map(lambda a: a[:, :C], acts), noise, context_noise=0.1)
    z = kv_cache.denoise_frame(model, cache, z0, action, k=2)
    cache = kv_cache.commit_frame(model, cache, z, noise[:, 0], action, context_noise=0.1)
    return z, kv_cache.frame_forward(model, cache, z0, 3, 1, action)[0]

  for a, b in zip(frame(0), frame(3_000_001)):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=2e-5, rtol=2e-5)


def test_generate_frame_equals_denoise_then_commit():
  # World.step's one loop of k + 1 passes gives the frame and the cache that the
  # separate denoise and commit calls give (ring wrapped, two kv heads).
  model = _two_head_dynamics()
  B, C = 2, 5
  acts, ctx, noise, action, z0, noise_new = _rollout_inputs(7, B, C)
  cache = kv_cache.prime(
    model, kv_cache.init_cache(model, B), ctx, jax.tree.map(lambda a: a[:, :C], acts), noise, context_noise=0.1
  )
  z_ref = kv_cache.denoise_frame(model, cache, z0, action, k=2)
  cache_ref = kv_cache.commit_frame(model, cache, z_ref, noise_new, action, context_noise=0.1)
  z, cache_new = jax.jit(lambda c: kv_cache.generate_frame(model, c, z0, noise_new, action, k=2, context_noise=0.1))(
    cache
  )
  np.testing.assert_allclose(np.asarray(z), np.asarray(z_ref), atol=1e-5, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(cache_new), jax.tree.leaves(cache_ref)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=1e-5)


def test_rope_at_is_rope_where_rope_is_exact_and_exact_far_out():
  x = jax.random.normal(jax.random.key(6), (2, 7, 3, 16))
  small = jnp.array([0, 6, 3, 2, 5, 1, 4])
  np.testing.assert_allclose(np.asarray(tr.rope_at(x, small)), np.asarray(tr.rope(x, small)), atol=1e-6, rtol=1e-6)
  # Far out, against the rotation computed in float64.
  far = np.array([2**31 - 1, 123_456_789, 4_194_304, 2048, 2047, 10**9, 77_777])
  freqs = (10_000.0 ** (-np.arange(8) / 8)).astype(np.float32).astype(np.float64)
  angles = far[:, None].astype(np.float64) * freqs[None]
  sin, cos = np.sin(angles)[:, None], np.cos(angles)[:, None]
  x64 = np.asarray(x, np.float64)
  x1, x2 = x64[..., :8], x64[..., 8:]
  want = np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  np.testing.assert_allclose(np.asarray(tr.rope_at(x, jnp.asarray(far, jnp.int32))), want, atol=5e-6)
