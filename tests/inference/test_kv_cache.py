"""Tests for the time-layer KV cache and Transformer.decode."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from data_pipelines.envs.base import ActionComponent, ActionSpec
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
  spec = ActionSpec((ActionComponent("move", "discrete", 3),))
  with nnx.use_eager_sharding(False):
    model = Dynamics(
      num_latents=4,
      latent_dim=2,
      group=2,
      num_registers=1,
      action_spec=spec,
      k_max=8,
      width=32,
      depth=2,
      num_heads=2,
      num_kv_heads=1,
      head_dim=16,
      mlp_dim=64,
      time_every=2,
      softcap=None,
      context=4,
      rngs=nnx.Rngs(0),
    )
  cache = kv_cache.init_cache(model, batch=2)
  assert cache.k_LBSMGK.shape == (1, 2, model.layout.num_tokens, 3, 1, 16)
  for f in range(5):
    k_new = jnp.full((1, 2, model.layout.num_tokens, 1, 16), float(f))
    cache = kv_cache.write_frame(cache, k_new, k_new)
  assert int(cache.length) == 5
  np.testing.assert_array_equal(np.asarray(cache.frame_M), [3, 4, 2])  # slot = frame % 3
  np.testing.assert_array_equal(np.asarray(cache.k_LBSMGK[0, 0, 0, :, 0, 0]), [3.0, 4.0, 2.0])
