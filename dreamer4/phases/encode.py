"""Writes a frozen tokenizer's latents for a whole EpisodeStore into the store ("latents").

The dynamics phase then streams latents instead of pixels, and never decodes inside its
train step. Frames are encoded in fixed-size blocks with a halo of earlier frames as deep
as the tokenizer's temporal receptive field, and a time mask that keeps episodes apart, so
every latent equals the one the tokenizer computes for that frame in its own episode.
The array's attrs record which tokenizer checkpoint made it; a finished array made by the
same checkpoint is reused.
"""

from __future__ import annotations

import logging
import time

import jax
import jax.numpy as jnp
import numpy as np

from data_pipelines.episodes import EpisodeStore
from dreamer4 import sharding as shd
from dreamer4.errors import ConfigError
from dreamer4.runs import LATENTS, latents_attrs, latents_ready, load_tokenizer


def block_time_mask(episode_T: np.ndarray, context: int) -> np.ndarray:
  """[T, T] bool: causal, within `context` frames when > 0, and never across episodes (-1 = padding)."""
  t = np.arange(len(episode_T))
  m = (t[None, :] <= t[:, None]) & (episode_T[:, None] == episode_T[None, :]) & (episode_T[None, :] >= 0)
  if context:
    m &= (t[:, None] - t[None, :]) < context
  return m


def encode_dataset(config, workdir: str) -> dict:
  """Encodes `config.data.path` with the tokenizer in `config.tokenizer_workdir`."""
  del workdir  # the latents live in the dataset; nothing is written to the job's workdir
  t0 = time.time()
  store = EpisodeStore.open(config.data.path, mode="a")
  mesh = shd.make_mesh(config.mesh)
  tcfg, mdef, params, step = load_tokenizer(config.tokenizer_workdir, mesh, store.frame_shape)
  attrs = latents_attrs(config.tokenizer_workdir, step, tcfg)
  if latents_ready(store, attrs):
    logging.info("encode: %s already holds latents of %s step %d", store.path, config.tokenizer_workdir, step)
    return {"stop_reason": "finished", "skipped": True, "frames": store.num_frames}

  context = int(tcfg.model.context)
  time_layers = sum((i + 1) % tcfg.model.time_every == 0 for i in range(tcfg.model.enc_depth))
  lengths = store.episode_lengths
  halo = (context - 1) * time_layers if context else int(lengths.max()) - 1
  R, B = int(config.encode.block_frames), int(config.encode.batch_blocks)
  if R < 1 or B < 1:
    raise ConfigError("--config.encode.block_frames and --config.encode.batch_blocks must be >= 1")
  shd.check_batch_divides(B, mesh, "--config.encode.batch_blocks")
  T = halo + R
  N, L = attrs["num_latents"], attrs["latent_dim"]
  H, W, C = store.frame_shape
  num_frames = store.num_frames
  episode_of_row = np.repeat(np.arange(len(lengths)), lengths)

  store.add_array(
    LATENTS, (N, L), np.float32, dict(attrs, complete=False), overwrite=store.array_attrs(LATENTS) is not None
  )
  batch_sh = shd.batch_sharding(mesh, 5)
  mask_sh = shd.batch_sharding(mesh, 3)

  @jax.jit
  def encode(params, frames_u8, mask_BTT):
    model = mdef.merge(params)
    return model.encode(frames_u8.astype(jnp.float32) / 255.0, time_mask_BTT=mask_BTT)

  def global_array(x, sharding):
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])

  starts = list(range(0, num_frames, R))
  with jax.set_mesh(mesh):
    for g in range(0, len(starts), B):
      group = starts[g : g + B]
      frames = np.zeros((B, T, H, W, C), np.uint8)
      ep = np.full((B, T), -1, np.int64)
      for b, a in enumerate(group):
        lo, hi = max(0, a - halo), min(num_frames, a + R)
        off = lo - (a - halo)
        frames[b, off : off + hi - lo] = store.read("frames", lo, hi)
        ep[b, off : off + hi - lo] = episode_of_row[lo:hi]
      mask = np.stack([block_time_mask(e, context) for e in ep])
      z = encode(params, global_array(frames, batch_sh), global_array(mask, mask_sh))
      z = np.asarray(jax.device_get(jax.jit(lambda x: x, out_shardings=shd.replicated(mesh))(z)))
      if jax.process_index() == 0:
        for b, a in enumerate(group):
          n = min(R, num_frames - a)
          store.write(LATENTS, a, z[b, halo : halo + n])
  if jax.process_index() == 0:
    store.set_array_attrs(LATENTS, dict(attrs, complete=True, frames=num_frames))
  seconds = time.time() - t0
  logging.info(
    "encode: %d frames in %.1f s (%.0f frames/s), latents [%d, %d] from %s step %d",
    num_frames,
    seconds,
    num_frames / seconds,
    N,
    L,
    config.tokenizer_workdir,
    step,
  )
  return {"stop_reason": "finished", "skipped": False, "frames": num_frames, "seconds": seconds}
