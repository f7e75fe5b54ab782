"""Every attention implementation equals the dense reference: `attend` on random inputs with the
real space and time masks, the transformer stack (values and parameter gradients), and the
KV-cached decode; plus what the fused paths' missing soft cap changes and the chunked path's
memory."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from data_pipelines.envs.base import Action, ActionComponent, ActionSpec
from dreamer4.errors import ConfigError
from dreamer4.models import transformer as tr
from dreamer4.models.dynamics import Dynamics

ATOL = 1e-5
CAP = 2.0  # a cap small enough to change the logits of these inputs (the configs use 50)

# The token layouts of the models, with their asymmetric rules: the dynamics' agent token reads
# everything and is read by nothing; the tokenizer's patches read only patches.
DYN_LAYOUT = tr.TokenLayout((("spatial", 4), ("registers", 1), ("tau_d", 1), ("action", 1), ("agent", 2)))
ENC_LAYOUT = tr.TokenLayout((("patches", 6), ("latents", 3)))
SPACE_MASKS = {
  "dynamics": tr.space_mask(DYN_LAYOUT, tr.dynamics_rule(DYN_LAYOUT.names)),
  "encoder": tr.space_mask(ENC_LAYOUT, tr.ENCODER_RULE),
}


def _qkv(lead, Q, H, G, K=8, seed=0):
  k = jax.random.split(jax.random.key(seed), 4)
  # Scaled so that logits reach a few units: the cap of CAP then matters.
  return (
    2.0 * jax.random.normal(k[0], (*lead, Q, H, K)),
    2.0 * jax.random.normal(k[1], (*lead, Q, G, K)),
    jax.random.normal(k[2], (*lead, Q, G, K)),
    jax.random.normal(k[3], (*lead, Q, H, K)),
  )


def _compare(impl, mask, softcap, chunk=None):
  """jit(q, k, v, w) -> (output and q/k/v gradients of sum(out * w)) of `impl` and of dense.

  `impl` runs with `softcap`, the dense reference with the cap `impl` really applies; one
  program computes both (one compile per case).
  """

  def value_and_grads(q, k, v, w, impl, cap):
    def f(q, k, v):
      out = tr.attend(q, k, v, mask, softcap=cap, impl=impl, chunk=chunk)
      return jnp.sum(out * w), out

    (_, out), grads = jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True)(q, k, v)
    return out, grads

  return jax.jit(
    lambda *a: (
      value_and_grads(*a, impl, softcap),
      value_and_grads(*a, "dense", tr.effective_softcap(softcap, impl)),
      value_and_grads(*a, "dense", softcap)[0],
    )
  )


def _close(a, b, atol=ATOL):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol, rtol=1e-5)


def _cases():
  """(name, lead axes, mask): space layers over [B, T] rows, the time layer over [B, S] rows."""
  B, T, S = 2, 7, 9
  time = tr.time_mask(T, window=3, independent_B=jnp.array([True, False]))[:, None]  # [B, 1, T, T]
  return [
    ("space_dynamics", (B, 3), SPACE_MASKS["dynamics"]),
    ("space_encoder", (B, 3), SPACE_MASKS["encoder"]),
    ("time_window_independent", (B, S), time),
    ("key_padding", (B, 3), np.arange(S)[None, :] < 6),
  ]  # a [1, V] mask: one row for every query


@pytest.mark.parametrize("impl", ["chunked", "xla"])
def test_attend_equals_dense_values_and_gradients(impl):
  # chunk=2 splits 9 queries into 5 chunks of 2 (one padded row) and 7 frames into 4.
  for name, lead, mask in _cases():
    # GQA everywhere; multi-head and multi-query on the dynamics mask.
    for H, G in ((4, 2), (4, 4), (4, 1)) if name == "space_dynamics" else ((4, 2),):
      got, want, capped = _compare(impl, mask, CAP, chunk=2)(*_qkv(lead, np.shape(mask)[-1], H, G))
      _close(got, want)
      if impl == "xla":  # the fused paths' reference is uncapped: the cap really is dropped
        assert np.abs(np.asarray(got[0]) - np.asarray(capped)).max() > 1e-3, (name, H, G)


def _transformer(attention, softcap=CAP, depth=4, time_every=2):
  with nnx.use_eager_sharding(False):
    return tr.Transformer(
      width=32,
      depth=depth,
      num_heads=4,
      num_kv_heads=2,
      head_dim=8,
      mlp_dim=64,
      time_every=time_every,
      softcap=softcap,
      rngs=nnx.Rngs(0),
      attention=attention,
      remat=True,
    )


@pytest.mark.parametrize("impl", ["chunked", "xla"])
def test_transformer_paths_equal_dense(impl, monkeypatch):
  # A scanned, rematerialised GQA stack with the dynamics layout and a windowed time mask.
  monkeypatch.setattr(tr, "ATTENTION_CHUNK", 4)  # 9 tokens in 3 chunks, 6 frames in 2
  model = _transformer(impl)
  ref = _transformer("dense", softcap=tr.effective_softcap(CAP, impl))
  x = jax.random.normal(jax.random.key(1), (2, 6, DYN_LAYOUT.num_tokens, 32))
  time_mask = tr.time_mask(6, window=4, independent_B=jnp.array([False, True]))

  @nnx.jit
  def loss_and_grads(model, x):
    def loss(model):
      y = model(x, space_mask_SS=SPACE_MASKS["dynamics"], time_mask_BTT=time_mask)
      return jnp.mean(jnp.sin(2.0 * y)), y

    (_, y), grads = nnx.value_and_grad(loss, has_aux=True)(model)
    return y, nnx.state(grads, nnx.Param).to_pure_dict()

  _close(loss_and_grads(model, x), loss_and_grads(ref, x))


@pytest.mark.parametrize("impl", ["dense", "chunked", "xla"])
def test_kv_cached_decode_equals_full_pass(impl, monkeypatch):
  # Frame by frame through the cache equals the full causal pass ON THE SAME PATH: the decode
  # applies the cap exactly where the path does (none on "xla"), with a cap that matters.
  monkeypatch.setattr(tr, "ATTENTION_CHUNK", 4)
  B, T, S, D = 2, 5, DYN_LAYOUT.num_tokens, 32
  model = _transformer(impl, depth=2)  # one time layer: the cached k/v are the full pass's
  x = jax.random.normal(jax.random.key(2), (B, T, S, D))
  mask_SS = SPACE_MASKS["dynamics"]
  full = np.asarray(nnx.jit(lambda m, x: m(x, space_mask_SS=mask_SS, time_mask_BTT=tr.time_mask(T)))(model, x))
  decode = nnx.jit(
    lambda m, x, k, v, valid, t: m.decode(
      x,
      space_mask_SS=mask_SS,
      cache_k_LBSMGK=k,
      cache_v_LBSMGK=v,
      cache_pos_M=jnp.arange(T - 1),
      cache_valid_M=valid,
      query_pos=t,
    )
  )
  k = jnp.zeros((1, B, S, T - 1, 2, 8))
  v = jnp.zeros_like(k)
  for t in range(T):
    y, k_new, v_new = decode(model, x[:, t], k, v, jnp.arange(T - 1) < t, t)
    np.testing.assert_allclose(np.asarray(y), full[:, t], atol=ATOL, rtol=1e-5)
    if t < T - 1:
      k, v = k.at[:, :, :, t].set(k_new), v.at[:, :, :, t].set(v_new)


def _dynamics(attention, softcap=50.0):
  cfg = ml_collections.ConfigDict(
    dict(
      group=2,
      num_registers=1,
      k_max=8,
      width=32,
      depth=4,
      num_heads=4,
      num_kv_heads=2,
      head_dim=8,
      mlp_dim=64,
      time_every=2,
      softcap=softcap,
      context=3,
      dtype="float32",
      remat=False,
      spatial_pos=False,
      scan_layers=True,
      remat_policy="nothing",
      attention=attention,
    )
  )
  with nnx.use_eager_sharding(False):
    return Dynamics.from_config(
      cfg, 8, 4, ActionSpec((ActionComponent("move", "discrete", 3),)), nnx.Rngs(0), num_agent_tokens=1, num_tasks=2
    )


def test_dropped_soft_cap_changes_a_small_model_little():
  """What "xla" loses: the configs' cap (50) against none, on a small dynamics model at init.

  QKNorm bounds a logit by sqrt(head_dim) times the two norm scales (1 at init), far below
  50, where c * tanh(x / c) = x (1 - x^2 / 3c^2 + ...). Trained toy models, measured when the
  fused paths were added: the dynamics model (width 128, depth 8, 3000 steps; norm scales
  <= 1.33, so logits <= 9.6) moved its clean-latent predictions by at most 0.4% of their
  largest value (mean 6e-5 against a mean size of 0.86) and its next-frame latent MSE not
  in 4 digits (0.04267); the tokenizer's reconstructions moved by <= 7e-4 (38.529 against
  38.528 dB PSNR).
  """
  k = jax.random.split(jax.random.key(5), 4)
  B, T = 2, 4
  args = (
    jax.random.normal(k[0], (B, T, 8, 4)),
    jax.random.randint(k[1], (B, T), 0, 9),
    jax.random.randint(k[2], (B, T), 0, 4),
    Action.labelled_from(jax.random.randint(k[3], (B, T, 1), 0, 3)),
  )
  run = nnx.jit(lambda m, *a: m(*a)["z1_hat_BTNL"])
  capped = np.asarray(run(_dynamics("dense"), *args))
  fused = np.asarray(run(_dynamics("xla"), *args))
  uncapped = np.asarray(run(_dynamics("dense", softcap=None), *args))
  np.testing.assert_allclose(fused, uncapped, atol=ATOL, rtol=1e-5)  # "xla" == no cap
  change = np.abs(fused - capped).max() / np.abs(capped).max()
  assert 0 < change < 1e-3, change


def test_chunked_attention_bounds_the_logits_memory():
  # Compiled temporaries of forward + backward at 512 queries x 512 keys: the dense path holds
  # [4 rows, 4 heads, 512, 512] float32 logits (and their softmax) at once, the chunked one a
  # 128-query slice of them.
  N, Q, H, G, K = 4, 512, 4, 2, 16
  q = jax.ShapeDtypeStruct((N, Q, H, K), jnp.float32)
  kv = jax.ShapeDtypeStruct((N, Q, G, K), jnp.float32)
  mask = np.tril(np.ones((Q, Q), bool))

  def temp_bytes(impl):
    loss = lambda q, k, v: jnp.sum(tr.attend(q, k, v, mask, softcap=50.0, impl=impl) ** 2)
    compiled = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(q, kv, kv).compile()
    return compiled.memory_analysis().temp_size_in_bytes

  logits_bytes = N * H * Q * Q * 4
  dense, chunked = temp_bytes("dense"), temp_bytes("chunked")
  assert dense > 2 * logits_bytes and chunked < 0.5 * dense, (dense, chunked, logits_bytes)


def test_unknown_attention_is_a_config_error():
  with pytest.raises(ConfigError, match="--config.model.attention='flash'"):
    _transformer("flash")
  with pytest.raises(ConfigError, match="attention=cudnn needs --config.model.dtype=bfloat16"):
    _transformer("cudnn")  # float32: cuDNN's flash kernel would fail at the first step
