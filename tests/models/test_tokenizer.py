"""Tests for the causal tokenizer."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from dreamer4.models import transformer as tr
from dreamer4.models.tokenizer import Tokenizer, patchify, unpatchify

FRAME_SHAPE = (16, 16, 3)


def _cfg(**overrides):
  cfg = ml_collections.ConfigDict(
    dict(
      patch_size=4,
      num_latents=4,
      latent_dim=8,
      width=32,
      enc_depth=2,
      dec_depth=2,
      num_heads=4,
      num_kv_heads=2,
      head_dim=8,
      mlp_dim=64,
      time_every=2,
      softcap=50.0,
      dtype="float32",
      remat=False,
      scan_layers=False,
      remat_policy="nothing",
      context=0,
      readout_bias_init=0.0,
      readout_init_scale=1.0,
      block_skip=False,
      output="sigmoid",
      attention="dense",
    )
  )
  cfg.update(overrides)
  return cfg


def _make(**overrides):
  with nnx.use_eager_sharding(False):
    return Tokenizer.from_config(_cfg(**overrides), FRAME_SHAPE, nnx.Rngs(0))


@pytest.fixture(scope="module", params=["default", "block_skip"])
def model(request):
  # Every model test runs on the plain tokenizer and on the toy default's options (block
  # skip path + straight-through clipped readout): causality must hold for both.
  if request.param == "block_skip":
    return _make(block_skip=True, output="clip", readout_bias_init=0.13, readout_init_scale=0.1)
  return _make()


def _frames(B=2, T=4, seed=0):
  return jax.random.uniform(jax.random.key(seed), (B, T) + FRAME_SHAPE)


def _perturb_from(frames, t):
  noise = jax.random.uniform(jax.random.key(99), frames[:, t:].shape)
  return frames.at[:, t:].set(noise)


def test_patchify_roundtrip():
  x = _frames()
  p = patchify(x, 4)
  assert p.shape == (2, 4, 16, 48)
  np.testing.assert_array_equal(p[0, 0, 1], x[0, 0, 0:4, 4:8].reshape(-1))
  np.testing.assert_array_equal(unpatchify(p, FRAME_SHAPE, 4), x)


def test_patch_size_validation():
  with pytest.raises(ValueError, match="config.model.patch_size"):
    _make(patch_size=5)


def test_shapes_and_ranges(model):
  x = _frames()
  out = nnx.jit(lambda m, x: m(x))(model, x)
  assert out["recon_BTHWC"].shape == x.shape
  assert out["z_BTNL"].shape == (2, 4, 4, 8)
  assert out["mask_BTP"].shape == (2, 4, 16) and out["mask_BTP"].dtype == jnp.bool_
  assert np.all(np.abs(np.asarray(out["z_BTNL"])) <= 1.0)
  assert not np.any(out["mask_BTP"])  # no mask without mask_rng
  np.testing.assert_array_equal(out["masked_input_BTHWC"], x)
  recon = np.asarray(out["recon_BTHWC"])
  assert recon.min() >= 0.0 and recon.max() <= 1.0


def test_mask_fraction(model):
  mask = model.sample_mask(jax.random.key(1), 256, 8, 0.9)
  frac = float(jnp.mean(mask))
  assert 0.35 < frac < 0.55, frac
  out = nnx.jit(lambda m, x, r: m(x, mask_rng=r))(model, _frames(), jax.random.key(2))
  m = np.asarray(out["mask_BTP"])
  assert 0 < m.mean() < 1
  # Masked patches are grey in the summary image, visible ones untouched.
  masked_p = np.asarray(patchify(out["masked_input_BTHWC"], 4))
  orig_p = np.asarray(patchify(_frames(), 4))
  assert np.all(masked_p[m] == 0.5)
  np.testing.assert_array_equal(masked_p[~m], orig_p[~m])


def test_encode_causal(model):
  x = _frames()
  enc = nnx.jit(lambda m, x: m.encode(x))
  z, z2 = np.asarray(enc(model, x)), np.asarray(enc(model, _perturb_from(x, 2)))
  assert np.array_equal(z[:, :2], z2[:, :2])
  assert not np.allclose(z[:, 2:], z2[:, 2:])


def test_decode_causal(model):
  z = jax.random.uniform(jax.random.key(3), (2, 4, 4, 8), minval=-1, maxval=1)
  dec = nnx.jit(lambda m, z: m.decode(z))
  z_perturbed = z.at[:, 2:].set(-z[:, 2:])
  y, y2 = np.asarray(dec(model, z)), np.asarray(dec(model, z_perturbed))
  assert y.shape == (2, 4) + FRAME_SHAPE
  assert np.array_equal(y[:, :2], y2[:, :2])
  assert not np.allclose(y[:, 2:], y2[:, 2:])


def test_call_causal_with_mask(model):
  x = _frames()
  call = nnx.jit(lambda m, x, r: m(x, mask_rng=r))
  rng = jax.random.key(5)
  out, out2 = call(model, x, rng), call(model, _perturb_from(x, 1), rng)
  for key in ("recon_BTHWC", "z_BTNL"):
    a, b = np.asarray(out[key]), np.asarray(out2[key])
    assert np.array_equal(a[:, :1], b[:, :1]), key
    assert not np.allclose(a[:, 1:], b[:, 1:]), key
  np.testing.assert_array_equal(out["mask_BTP"], out2["mask_BTP"])


def test_partition_names(model):
  params = nnx.to_flat_state(nnx.state(model, nnx.Param))
  assert len(params) > 20
  for path, var in params:
    names = var.get_metadata()["out_sharding"]
    assert isinstance(names, tuple), path
    assert len(names) == var[...].ndim, path
    assert all(n is None or n in tr.LOGICAL_AXES for n in names), path
  # The logical PartitionSpecs come out of nnx.get_partition_spec.
  specs = nnx.get_partition_spec(nnx.state(model, nnx.Param))
  assert tuple(specs["encoder"]["blocks"][0]["attn"]["wq"].get_value()) == ("embed", "heads", "head_dim")


def test_block_skip_and_output_settings_are_checked():
  with pytest.raises(ValueError, match="block_skip"):
    _make(block_skip=True, num_latents=3)  # 16 patches are not whole blocks of 3 latents
  with pytest.raises(ValueError, match="config.model.output"):
    _make(output="tanh")


def test_clip_readout_is_in_range_with_the_identity_gradient():
  m = _make(output="clip", readout_bias_init=0.5, readout_init_scale=30.0)  # logits far outside [0, 1]
  z = jax.random.uniform(jax.random.key(1), (1, 1, 4, 8), minval=-1, maxval=1)
  out = m.decode(z)
  assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
  assert float(jnp.mean((out == 0.0) | (out == 1.0))) > 0.2  # many pixels clipped...
  g = nnx.grad(lambda mm: jnp.sum(mm.decode(z)))(m)
  # ...yet every readout bias gets the identity's gradient: 1 per patch it feeds (16 patches).
  np.testing.assert_allclose(np.asarray(g["readout_bias"][...]), np.full((48,), 16.0), rtol=1e-6)
