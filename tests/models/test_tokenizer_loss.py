"""Tests for the tokenizer objective (loss, gradients, a short fit)."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from dreamer4.models.lpips import load_lpips_params
from dreamer4.models.tokenizer import Tokenizer
from dreamer4.objectives.normalize import rms_init
from dreamer4.objectives.tokenizer import RMS_NAMES, tokenizer_loss


def _model():
  cfg = ml_collections.ConfigDict(dict(
      patch_size=4, num_latents=4, latent_dim=8, width=32, enc_depth=2, dec_depth=2,
      num_heads=4, num_kv_heads=2, head_dim=8, mlp_dim=64, time_every=2, softcap=50.0,
      dtype="float32", remat=False,
  ))
  with nnx.use_eager_sharding(False):
    return Tokenizer.from_config(cfg, (16, 16, 3), nnx.Rngs(0))


def _global_norm(tree):
  return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree)))


def test_loss_gradients_and_short_fit():
  model = _model()
  with nnx.use_eager_sharding(False):
    opt = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
  lpips_params = jax.device_put(load_lpips_params())  # transfer the 59 MB once, not per step
  # Smooth images (upsampled noise), as uint8 like the data pipeline delivers.
  low = jax.random.uniform(jax.random.key(0), (2, 2, 4, 4, 3))
  frames = (jax.image.resize(low, (2, 2, 16, 16, 3), "linear") * 255).astype(jnp.uint8)

  @nnx.jit
  def train_step(model, opt, lpips_params, frames, rms_state, rng):
    grad_fn = nnx.value_and_grad(tokenizer_loss, has_aux=True)
    (loss, (rms_state, metrics)), grads = grad_fn(
        model, lpips_params, frames, rms_state, rng, lpips_frames=1
    )
    opt.update(model, grads)
    grad_norms = {k: _global_norm(grads[k]) for k in ("encoder", "decoder", "patch_in_kernel",
                                                      "readout_kernel", "mask_embed")}
    return loss, rms_state, metrics, grad_norms

  @nnx.jit
  def unmasked_mse(model, frames):
    x = frames.astype(jnp.float32) / 255.0
    return jnp.mean(jnp.square(model(x)["recon_BTHWC"] - x))

  mse_before = float(unmasked_mse(model, frames))
  rms_state = rms_init(RMS_NAMES)
  loss, rms_state, metrics, grad_norms = train_step(
      model, opt, lpips_params, frames, rms_state, jax.random.key(1)
  )
  # First step: both terms normalise to ~1, so loss ~ 1 + 0.2.
  assert np.isfinite(float(loss))
  np.testing.assert_allclose(float(loss), 1.2, rtol=1e-4)
  np.testing.assert_allclose(
      float(loss), float(metrics["mse_norm"]) + 0.2 * float(metrics["lpips_norm"]), rtol=1e-5
  )
  for name, g in grad_norms.items():
    assert np.isfinite(float(g)) and float(g) > 0, name
  assert 0.0 <= float(metrics["mask_fraction"]) <= 1.0
  assert float(metrics["lpips"]) > 0 and np.isfinite(float(metrics["psnr"]))
  assert int(rms_state["mse"]["count"]) == 1 and int(rms_state["lpips"]["count"]) == 1

  for i in range(2, 16):
    loss, rms_state, metrics, _ = train_step(
        model, opt, lpips_params, frames, rms_state, jax.random.key(i)
    )
  mse_after = float(unmasked_mse(model, frames))
  # Measured: 0.078 -> 0.039 after 15 Adam(1e-2) steps (a 2x drop); the step count is
  # kept small because compiling the VGG backward pass dominates this test.
  assert mse_after < 0.6 * mse_before, (mse_before, mse_after)
