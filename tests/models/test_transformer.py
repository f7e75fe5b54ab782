"""Tests for the block-causal axial transformer."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dreamer4.models import transformer as tr

WIDTH = 32


def _make(depth=2, time_every=2, num_heads=4, num_kv_heads=2, seed=0, remat=False, scan_layers=True):
  with nnx.use_eager_sharding(False):
    return tr.Transformer(
      width=WIDTH,
      depth=depth,
      num_heads=num_heads,
      num_kv_heads=num_kv_heads,
      head_dim=8,
      mlp_dim=64,
      time_every=time_every,
      softcap=50.0,
      rngs=nnx.Rngs(seed),
      remat=remat,
      scan_layers=scan_layers,
    )


def _apply(model, x_BTSD, space_mask_SS, time_mask_BTT):
  @nnx.jit
  def f(model, x_BTSD, time_mask_BTT):
    return model(x_BTSD, space_mask_SS=space_mask_SS, time_mask_BTT=time_mask_BTT)

  return np.asarray(f(model, x_BTSD, time_mask_BTT))


LAYOUT = tr.TokenLayout((("patches", 4), ("latents", 2)))
ENC_MASK = tr.space_mask(LAYOUT, tr.ENCODER_RULE)


def _x(B=2, T=4, S=6, seed=1):
  return jax.random.normal(jax.random.key(seed), (B, T, S, WIDTH))


def test_layout_basics():
  assert LAYOUT.num_tokens == 6
  assert LAYOUT.slice("latents") == slice(4, 6)
  assert LAYOUT.names == ("patches", "latents")
  with pytest.raises(ValueError):
    tr.TokenLayout((("a", 1), ("a", 2)))
  with pytest.raises(ValueError):
    tr.space_mask(LAYOUT, {"patches": {"patches"}})


def test_encoder_mask_matrix():
  layout = tr.TokenLayout((("patches", 2), ("latents", 1)))
  expected = np.array([[1, 1, 0], [1, 1, 0], [1, 1, 1]], dtype=bool)
  np.testing.assert_array_equal(tr.space_mask(layout, tr.ENCODER_RULE), expected)


def test_decoder_mask_matrix():
  layout = tr.TokenLayout((("queries", 2), ("latents", 1)))
  expected = np.array([[1, 1, 1], [1, 1, 1], [0, 0, 1]], dtype=bool)
  np.testing.assert_array_equal(tr.space_mask(layout, tr.DECODER_RULE), expected)


def test_dynamics_agent_mask_matrix():
  layout = tr.TokenLayout((("spatial", 2), ("registers", 1), ("tau_d", 1), ("action", 1), ("agent", 1)))
  m = tr.space_mask(layout, tr.dynamics_rule())
  expected = np.ones((6, 6), dtype=bool)
  expected[:5, 5] = False  # no modality reads the agent token
  np.testing.assert_array_equal(m, expected)
  assert m[5].all()  # the agent reads everything


def test_time_mask_matrices():
  np.testing.assert_array_equal(tr.time_mask(3), np.tril(np.ones((3, 3), bool)))
  expected_window = np.array([[1, 0, 0, 0], [1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1]], dtype=bool)
  np.testing.assert_array_equal(tr.time_mask(4, window=2), expected_window)
  m = np.asarray(tr.time_mask(3, independent_B=jnp.array([False, True])))
  assert m.shape == (2, 3, 3)
  np.testing.assert_array_equal(m[0], np.tril(np.ones((3, 3), bool)))
  np.testing.assert_array_equal(m[1], np.eye(3, dtype=bool))


def test_time_layer_placement():
  assert _make(depth=8, time_every=4).time_layers == (False, False, False, True) * 2
  assert _make(depth=2, time_every=2).time_layers == (False, True)


def test_block_causality_exact():
  model = _make()
  x = _x()
  y = _apply(model, x, ENC_MASK, tr.time_mask(4))
  x2 = x.at[:, 2:].add(jax.random.normal(jax.random.key(7), x[:, 2:].shape) * 3.0)
  y2 = _apply(model, x2, ENC_MASK, tr.time_mask(4))
  assert np.array_equal(y[:, :2], y2[:, :2])
  assert not np.allclose(y[:, 2:], y2[:, 2:])


def test_remat_matches():
  x = _x()
  y = _apply(_make(), x, ENC_MASK, tr.time_mask(4))
  y_remat = _apply(_make(remat=True), x, ENC_MASK, tr.time_mask(4))
  np.testing.assert_allclose(y, y_remat, atol=1e-6)


def test_space_layer_is_per_frame_and_respects_modality_mask():
  model = _make(depth=1, time_every=2, scan_layers=False)  # one space layer, no time layer
  x = _x()
  y = _apply(model, x, ENC_MASK, tr.time_mask(4))
  # Perturb frame 1 only.
  x2 = x.at[:, 1].add(1.0)
  y2 = _apply(model, x2, ENC_MASK, tr.time_mask(4))
  for t in (0, 2, 3):
    assert np.array_equal(y[:, t], y2[:, t])
  # Perturbing latents of every frame must not change patch outputs (patches
  # read only patches).
  x3 = x.at[:, :, 4:].add(1.0)
  y3 = _apply(model, x3, ENC_MASK, tr.time_mask(4))
  assert np.array_equal(y[:, :, :4], y3[:, :, :4])
  assert not np.allclose(y[:, :, 4:], y3[:, :, 4:])


def test_time_layer_is_per_position_causal():
  model = _make(depth=1, time_every=1)  # one time layer only
  x = _x()
  y = _apply(model, x, ENC_MASK, tr.time_mask(4))
  x2 = x.at[:, 1, 3].add(1.0)  # frame 1, token position 3
  y2 = _apply(model, x2, ENC_MASK, tr.time_mask(4))
  changed = ~np.all(y == y2, axis=-1)  # [B,T,S]
  expected = np.zeros_like(changed)
  expected[:, 1:, 3] = True
  np.testing.assert_array_equal(changed, expected)


def test_sliding_window_and_independent_images():
  model = _make(depth=1, time_every=1)
  x = _x(T=5)
  window_mask = tr.time_mask(5, window=2)
  y = _apply(model, x, ENC_MASK, window_mask)
  x2 = x.at[:, 0].add(1.0)
  y2 = _apply(model, x2, ENC_MASK, window_mask)
  assert not np.allclose(y[:, :2], y2[:, :2])  # frames 0 and 1 see frame 0
  assert np.array_equal(y[:, 2:], y2[:, 2:])  # frames >= 2 are outside the window
  # Independent images: nothing crosses frames for the flagged sequence.
  indep = tr.time_mask(5, independent_B=jnp.array([True, False]))
  y = _apply(model, x, ENC_MASK, indep)
  y2 = _apply(model, x2, ENC_MASK, indep)
  assert np.array_equal(y[0, 1:], y2[0, 1:])
  assert not np.allclose(y[1, 1:], y2[1, 1:])


def test_gqa_equals_repeated_kv_heads():
  with nnx.use_eager_sharding(False):
    kw = dict(width=WIDTH, num_heads=4, head_dim=8, softcap=50.0, dtype=jnp.float32)
    gqa = tr.Attention(num_kv_heads=2, rngs=nnx.Rngs(0), **kw)
    mha = tr.Attention(num_kv_heads=4, rngs=nnx.Rngs(1), **kw)
  mha.wq[...] = gqa.wq[...]
  mha.wo[...] = gqa.wo[...]
  mha.q_norm.scale[...] = gqa.q_norm.scale[...]
  mha.k_norm.scale[...] = gqa.k_norm.scale[...] * 1.0
  # Query heads 2g and 2g+1 share kv head g.
  mha.wk[...] = jnp.repeat(gqa.wk[...], 2, axis=1)
  mha.wv[...] = jnp.repeat(gqa.wv[...], 2, axis=1)
  x_NQD = jax.random.normal(jax.random.key(3), (3, 5, WIDTH))
  mask = np.tril(np.ones((5, 5), bool))
  pos = jnp.arange(5)
  np.testing.assert_allclose(gqa(x_NQD, mask, pos), mha(x_NQD, mask, pos), atol=1e-5, rtol=1e-5)
  assert gqa.wk.shape == (WIDTH, 2, 8)


def test_soft_cap_bounds_logits():
  x = jnp.array([-1e6, -1e3, -60.0, -1.0, 0.0, 1.0, 60.0, 1e3, 1e6])
  capped = tr.soft_cap(x, 50.0)
  assert np.all(np.abs(np.asarray(capped)) <= 50.0)
  np.testing.assert_allclose(tr.soft_cap(jnp.array([0.5]), 50.0), [0.5], rtol=1e-4)
  np.testing.assert_array_equal(tr.soft_cap(x, None), x)


def test_partition_names_allowed():
  model = _make()
  for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    names = var.get_metadata()["out_sharding"]
    assert len(names) == var[...].ndim, path
    assert all(n is None or n in tr.LOGICAL_AXES for n in names), path


def test_dense_equals_einsum_values_and_gradients():
  """`dense` (one 2-D matmul on flattened rows) computes what the einsum it replaced did."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 3, 5, 8)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(8, 4, 6)), jnp.float32)  # [D, H, K], as Attention.wq
  wo = jnp.asarray(rng.normal(size=(4, 6, 8)), jnp.float32)  # [H, K, D], as Attention.wo
  y = tr.dense(x, w)
  assert y.shape == (2, 3, 5, 4, 6)
  np.testing.assert_allclose(y, jnp.einsum("...qd,dhk->...qhk", x, w), rtol=1e-6, atol=1e-6)
  z = tr.dense(y, wo, in_axes=2)
  assert z.shape == x.shape
  np.testing.assert_allclose(z, jnp.einsum("...qhk,hkd->...qd", y, wo), rtol=1e-5, atol=1e-5)

  def loss(f, x, w, wo):
    return jnp.sum(jnp.tanh(f(f(x, w), wo, 2)))

  ours = jax.grad(lambda *a: loss(tr.dense, *a), argnums=(0, 1, 2))(x, w, wo)
  ref_f = lambda a, b, n=1: jnp.tensordot(a, b, axes=n)
  ref = jax.grad(lambda *a: loss(ref_f, *a), argnums=(0, 1, 2))(x, w, wo)
  for a, b in zip(ours, ref):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="disagree"):
    tr.dense(x, wo)


def test_rms_norm_gradient_matches_autodiff():
  """The written-out backward of `rms_norm` against autodiff of the plain formula."""
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(2, 3, 5, 16)) * 3.0, jnp.float32)
  scale = jnp.asarray(1.0 + 0.1 * rng.normal(size=(16,)), jnp.float32)
  w = jnp.asarray(rng.normal(size=x.shape), jnp.float32)

  def plain(x, scale, eps=1e-6):
    inv = jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + eps)
    return x * inv * scale

  np.testing.assert_array_equal(tr.rms_norm(x, scale, 1e-6), plain(x, scale))  # the same forward ops
  loss = lambda f: lambda x, s: jnp.sum(jnp.sin(f(x, s)) * w)
  ours = jax.grad(loss(lambda x, s: tr.rms_norm(x, s, 1e-6)), argnums=(0, 1))(x, scale)
  ref = jax.grad(loss(plain), argnums=(0, 1))(x, scale)
  for a, b in zip(ours, ref):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)
  # bfloat16 activations: computed in float32, returned (and differentiated) in bfloat16.
  xb = x.astype(jnp.bfloat16)
  assert tr.rms_norm(xb, scale, 1e-6).dtype == jnp.bfloat16
  gx = jax.grad(lambda x: jnp.sum(tr.rms_norm(x, scale, 1e-6).astype(jnp.float32)))(xb)
  assert gx.dtype == jnp.bfloat16
