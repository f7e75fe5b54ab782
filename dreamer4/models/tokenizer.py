"""Causal video tokenizer [P §3.1, App. A].

Frames are cut into patches, linearly embedded and (during training) partially
replaced by one learned mask embedding (MAE). The encoder transformer runs over
[patch tokens, learned latent tokens] per frame; the latents are projected to a
small channel count and squashed with tanh to form the bottleneck z. The decoder
projects z back up, appends learned patch-query tokens and reads pixels out of the
queries. Both transformers are block-causal in time, so frame t's latents and
reconstruction depend only on frames <= t.

Shape letters: B batch, T frames, H/W/C image, P patches per frame, Q pixels per
patch (patch_size**2 * C), N latent tokens, L latent channels, S tokens per frame,
D model width.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from dreamer4.errors import ConfigError
from dreamer4.models import transformer as tr

_GREY = 0.5  # Fill value for masked patches in the summary image.


def patchify(frames_BTHWC, patch_size: int):
  """[B,T,H,W,C] -> [B,T,P,Q], patches in raster order, pixels (row, col, channel)."""
  B, T, H, W, C = frames_BTHWC.shape
  p = patch_size
  x = frames_BTHWC.reshape(B, T, H // p, p, W // p, p, C)
  x = x.transpose(0, 1, 2, 4, 3, 5, 6)
  return x.reshape(B, T, (H // p) * (W // p), p * p * C)


def unpatchify(patches_BTPQ, frame_shape, patch_size: int):
  """Inverse of `patchify`: [B,T,P,Q] -> [B,T,H,W,C]."""
  B, T = patches_BTPQ.shape[:2]
  H, W, C = frame_shape
  p = patch_size
  x = patches_BTPQ.reshape(B, T, H // p, W // p, p, p, C)
  x = x.transpose(0, 1, 2, 4, 3, 5, 6)
  return x.reshape(B, T, H, W, C)


class Tokenizer(nnx.Module):
  """MAE-trained causal tokenizer with a tanh bottleneck."""

  def __init__(
    self,
    *,
    frame_shape,
    patch_size: int,
    num_latents: int,
    latent_dim: int,
    width: int,
    enc_depth: int,
    dec_depth: int,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    mlp_dim: int,
    time_every: int,
    softcap: float | None,
    rngs: nnx.Rngs,
    dtype=jnp.float32,
    remat: bool = False,
    context: int = 0,
    readout_bias_init: float = 0.0,
    readout_init_scale: float = 1.0,
    block_skip: bool = False,
    output: str = "sigmoid",
    scan_layers: bool = True,
    remat_policy: str = "nothing",
    attention: str = "dense",
  ):
    H, W, C = frame_shape
    if H % patch_size or W % patch_size:
      raise ConfigError(
        f"Frame size {H}x{W} is not divisible by config.model.patch_size={patch_size}; "
        "pad or resize frames, or change config.model.patch_size."
      )
    if output not in ("sigmoid", "clip"):
      raise ConfigError(f"config.model.output must be 'sigmoid' or 'clip', got {output!r}")
    self.frame_shape = (H, W, C)
    self.output = output
    self.patch_size = patch_size
    self.num_patches = (H // patch_size) * (W // patch_size)
    self.patch_dim = patch_size * patch_size * C
    self.num_latents = num_latents
    self.latent_dim = latent_dim
    self.dtype = dtype
    # Sliding time window (frames) of the time layers; 0 = the whole clip. Encoding or
    # decoding whole episodes with the training window keeps every frame's temporal
    # context in distribution (our choice; the paper trains on 16-frame windows).
    self.context = int(context)
    P, Q, N, L, D = self.num_patches, self.patch_dim, num_latents, latent_dim, width

    # Our choice (opt-in, `config.model.block_skip`): a direct linear path between latent j
    # and its block of P/N consecutive (raster-order) patches, in both directions. The
    # encoder adds Linear(concat of the block's patch embeddings, after MAE masking) to
    # latent token j; the decoder adds Linear_r(z_j) to the query of the r-th patch of
    # block j. Attention still mixes everything; the skip only gives every latent an
    # image-dependent start, which the toy tokenizer needs to leave the "background
    # only" plateau (README, tokenizer notes).
    self.block_skip = bool(block_skip)
    if self.block_skip and P % N:
      raise ConfigError(
        f"config.model.block_skip needs num_patches ({P}) divisible by config.model.num_latents ({N}); "
        "change num_latents or turn block_skip off."
      )
    self.enc_layout = tr.TokenLayout((("patches", P), ("latents", N)))
    self.dec_layout = tr.TokenLayout((("queries", P), ("latents", N)))

    param = tr.make_param
    small = nnx.initializers.truncated_normal(stddev=0.02)
    zeros = nnx.initializers.zeros
    # Encoder side.
    self.patch_in_kernel = param(rngs, tr.fan_in_init(Q), (Q, D), (None, "embed"))
    self.patch_in_bias = param(rngs, zeros, (D,), ("embed",))
    # Our choice (paper leaves it open): a learned absolute position embedding per
    # patch, added after masking so masked patches still know where they are, on
    # top of the 1-D RoPE inside the transformer (raster order alone is ambiguous
    # across image rows).
    self.patch_pos = param(rngs, small, (P, D), (None, "embed"))
    self.mask_embed = param(rngs, small, (1, D), (None, "embed"))
    self.latent_tokens = param(rngs, small, (N, D), (None, "embed"))
    tf_kwargs = dict(
      width=D,
      num_heads=num_heads,
      num_kv_heads=num_kv_heads,
      head_dim=head_dim,
      mlp_dim=mlp_dim,
      time_every=time_every,
      softcap=softcap,
      rngs=rngs,
      dtype=dtype,
      remat=remat,
      scan_layers=scan_layers,
      remat_policy=remat_policy,
      attention=attention,
    )
    self.encoder = tr.Transformer(depth=enc_depth, depth_setting="--config.model.enc_depth", **tf_kwargs)
    self.bottleneck_kernel = param(rngs, tr.fan_in_init(D), (D, L), ("embed", None))
    self.bottleneck_bias = param(rngs, zeros, (L,), (None,))
    if self.block_skip:
      R = P // N
      self.skip_in_kernel = param(rngs, tr.fan_in_init(R * D), (R * D, D), (None, "embed"))
      self.skip_out_kernel = param(rngs, tr.fan_in_init(L), (R, L, D), (None, None, "embed"))
    # Decoder side.
    self.latent_up_kernel = param(rngs, tr.fan_in_init(L), (L, D), (None, "embed"))
    self.latent_up_bias = param(rngs, zeros, (D,), ("embed",))
    self.patch_queries = param(rngs, small, (P, D), (None, "embed"))
    self.decoder = tr.Transformer(depth=dec_depth, depth_setting="--config.model.dec_depth", **tf_kwargs)
    # Our choice (config): the readout starts small with its bias at the logit of a typical
    # pixel, so the first steps do not spend their large gradients on the mean brightness
    # (that shock pushed the toy tokenizer's latents into a constant code).
    self.readout_kernel = param(rngs, tr.fan_in_init(D), (D, Q), ("embed", None))
    self.readout_bias = param(rngs, nnx.initializers.constant(readout_bias_init), (Q,), (None,))
    if readout_init_scale != 1.0:
      self.readout_kernel[...] = self.readout_kernel[...] * readout_init_scale

  @classmethod
  def from_config(cls, model_cfg, frame_shape, rngs: nnx.Rngs) -> Tokenizer:
    """Builds the tokenizer from `config.model` of configs/tokenizer.py (an ml_collections
    ConfigDict; a saved run's config is first upgraded by `dreamer4.runs.read_config`)."""
    return cls(
      frame_shape=tuple(frame_shape),
      patch_size=int(model_cfg.patch_size),
      num_latents=int(model_cfg.num_latents),
      latent_dim=int(model_cfg.latent_dim),
      width=int(model_cfg.width),
      enc_depth=int(model_cfg.enc_depth),
      dec_depth=int(model_cfg.dec_depth),
      num_heads=int(model_cfg.num_heads),
      num_kv_heads=int(model_cfg.num_kv_heads),
      head_dim=int(model_cfg.head_dim),
      mlp_dim=int(model_cfg.mlp_dim),
      time_every=int(model_cfg.time_every),
      softcap=model_cfg.softcap,
      rngs=rngs,
      dtype=jnp.dtype(model_cfg.dtype),
      remat=bool(model_cfg.remat),
      scan_layers=bool(model_cfg.scan_layers),
      remat_policy=str(model_cfg.remat_policy),
      attention=str(model_cfg.attention),
      context=int(model_cfg.context),
      readout_bias_init=float(model_cfg.readout_bias_init),
      readout_init_scale=float(model_cfg.readout_init_scale),
      block_skip=bool(model_cfg.block_skip),
      output=str(model_cfg.output),
    )

  # --------------------------------------------------------------------------------

  def _time_mask(self, T):
    # Causal time attention, limited to the last `context` frames when set.
    return tr.time_mask(T, window=self.context or None)

  def sample_mask(self, rng, B: int, T: int, max_mask_prob: float = 0.9):
    """MAE mask [B,T,P] (True = masked): per image p ~ U(0, max_mask_prob), then
    each patch is masked independently with probability p [P §3.1]."""
    p_rng, drop_rng = jax.random.split(rng)
    p_BT = jax.random.uniform(p_rng, (B, T), minval=0.0, maxval=max_mask_prob)
    u_BTP = jax.random.uniform(drop_rng, (B, T, self.num_patches))
    return u_BTP < p_BT[..., None]

  def _encode_patches(self, patches_BTPQ, mask_BTP, time_mask_BTT=None):
    B, T = patches_BTPQ.shape[:2]
    x_BTPD = tr.dense(patches_BTPQ.astype(self.dtype), self.patch_in_kernel[...].astype(self.dtype))
    x_BTPD = x_BTPD + self.patch_in_bias[...].astype(self.dtype)
    if mask_BTP is not None:
      x_BTPD = jnp.where(mask_BTP[..., None], self.mask_embed[...].astype(self.dtype), x_BTPD)
    x_BTPD = x_BTPD + self.patch_pos[...].astype(self.dtype)
    lat_BTND = jnp.broadcast_to(self.latent_tokens[...].astype(self.dtype), (B, T) + self.latent_tokens.shape)
    if self.block_skip:
      N = self.num_latents
      blocks_BTNX = x_BTPD.reshape(B, T, N, -1)  # block j = patches [j*R, (j+1)*R)
      lat_BTND = lat_BTND + tr.dense(blocks_BTNX, self.skip_in_kernel[...].astype(self.dtype))
    x_BTSD = jnp.concatenate([x_BTPD, lat_BTND], axis=2)
    y_BTSD = self.encoder(
      x_BTSD,
      space_mask_SS=tr.space_mask(self.enc_layout, tr.ENCODER_RULE),
      time_mask_BTT=self._time_mask(T) if time_mask_BTT is None else time_mask_BTT,
    )
    lat_BTND = y_BTSD[:, :, self.enc_layout.slice("latents")]
    z_BTNL = tr.dense(lat_BTND, self.bottleneck_kernel[...].astype(self.dtype))
    pre_BTNL = (z_BTNL + self.bottleneck_bias[...].astype(self.dtype)).astype(jnp.float32)
    z_BTNL = jnp.tanh(pre_BTNL)
    return z_BTNL

  def encode(self, frames_BTHWC, time_mask_BTT=None):
    """Frames in [0,1], [B,T,H,W,C] -> latents z in [-1,1], [B,T,N,L] (no masking).

    `time_mask_BTT` overrides the causal (windowed) time mask, e.g. to keep packed
    episodes from reading each other when encoding a whole dataset.
    """
    return self._encode_patches(patchify(frames_BTHWC, self.patch_size), None, time_mask_BTT)

  def _decode_patches(self, z_BTNL, time_mask_BTT=None):
    B, T = z_BTNL.shape[:2]
    lat_BTND = tr.dense(z_BTNL.astype(self.dtype), self.latent_up_kernel[...].astype(self.dtype))
    lat_BTND = lat_BTND + self.latent_up_bias[...].astype(self.dtype)
    q_BTPD = jnp.broadcast_to(self.patch_queries[...].astype(self.dtype), (B, T) + self.patch_queries.shape)
    if self.block_skip:
      skip_LRD = jnp.swapaxes(self.skip_out_kernel[...].astype(self.dtype), 0, 1)
      skip_BTNRD = tr.dense(z_BTNL.astype(self.dtype), skip_LRD)  # "btnl,rld->btnrd"
      q_BTPD = q_BTPD + skip_BTNRD.reshape(q_BTPD.shape)
    x_BTSD = jnp.concatenate([q_BTPD, lat_BTND], axis=2)
    y_BTSD = self.decoder(
      x_BTSD,
      space_mask_SS=tr.space_mask(self.dec_layout, tr.DECODER_RULE),
      time_mask_BTT=self._time_mask(T) if time_mask_BTT is None else time_mask_BTT,
    )
    q_BTPD = y_BTSD[:, :, self.dec_layout.slice("queries")]
    out_BTPQ = tr.dense(q_BTPD, self.readout_kernel[...].astype(self.dtype))
    out_BTPQ = (out_BTPQ + self.readout_bias[...].astype(self.dtype)).astype(jnp.float32)
    # Our choice (paper leaves the output activation open), `config.model.output`:
    #   sigmoid: pixels in [0,1] with a smooth gradient. Its slope is small away from 0.5,
    #     and on mostly-dark frames (the toy world's background is 0.09) it damps the
    #     gradient of the few bright sprite pixels ~10x: training stalls at "background".
    #   clip: a linear readout clipped to [0,1] in the forward pass with the identity's
    #     gradient (straight-through), so outputs stay valid LPIPS/PSNR input and every
    #     pixel's error reaches the model undamped.
    if self.output == "clip":
      return out_BTPQ + jax.lax.stop_gradient(jnp.clip(out_BTPQ, 0.0, 1.0) - out_BTPQ)
    return jax.nn.sigmoid(out_BTPQ)

  def decode(self, z_BTNL, time_mask_BTT=None):
    """Latents [B,T,N,L] -> frames in [0,1], [B,T,H,W,C] (float32)."""
    return unpatchify(self._decode_patches(z_BTNL, time_mask_BTT), self.frame_shape, self.patch_size)

  @property
  def receptive_field(self) -> int:
    """How many past frames (beyond the current one) can reach a frame's latents."""
    return (self.context - 1) * sum(self.encoder.time_layers) if self.context else -1

  def __call__(self, frames_BTHWC, *, mask_rng=None, max_mask_prob: float = 0.9):
    """Encodes (with MAE masking when `mask_rng` is given) and decodes.

    Args:
      frames_BTHWC: Float frames in [0,1].
      mask_rng: PRNG key for the MAE mask; None disables masking.
      max_mask_prob: Upper bound of the per-image mask probability.

    Returns:
      dict with recon_BTHWC (float32 in [0,1]), z_BTNL, mask_BTP (bool, True =
      masked) and masked_input_BTHWC (input with masked patches set to grey).
    """
    B, T = frames_BTHWC.shape[:2]
    patches_BTPQ = patchify(frames_BTHWC, self.patch_size)
    if mask_rng is None:
      mask_BTP = jnp.zeros((B, T, self.num_patches), dtype=bool)
      z_BTNL = self._encode_patches(patches_BTPQ, None)
    else:
      mask_BTP = self.sample_mask(mask_rng, B, T, max_mask_prob)
      z_BTNL = self._encode_patches(patches_BTPQ, mask_BTP)
    recon_BTHWC = self.decode(z_BTNL)
    masked_BTPQ = jnp.where(mask_BTP[..., None], jnp.asarray(_GREY, patches_BTPQ.dtype), patches_BTPQ)
    return dict(
      recon_BTHWC=recon_BTHWC,
      z_BTNL=z_BTNL,
      mask_BTP=mask_BTP,
      masked_input_BTHWC=unpatchify(masked_BTPQ, self.frame_shape, self.patch_size),
    )
