r"""Encode a dataset with a trained tokenizer (its latents are what the dynamics model learns on).

  python -m dreamer4.main --config=configs/encode.py --workdir=runs/toy/encode \
      --config.data.path=runs/toy/data --config.tokenizer_workdir=runs/toy/tokenizer

Writes the array `latents [N, num_latents, latent_dim]` into the EpisodeStore, with the
tokenizer workdir and checkpoint step in its attrs; a complete array from the same
checkpoint is reused.
"""

from __future__ import annotations

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  del arg  # one variant: sizes come from the tokenizer's own config.json
  c = ml_collections.ConfigDict()
  c.phase = "encode"  # dreamer4.main runs the encode job
  c.tokenizer_workdir = ""  # workdir of a finished tokenizer run
  c.data = ml_collections.ConfigDict()
  c.data.path = ""  # EpisodeStore to encode (latents are written into it)
  c.encode = ml_collections.ConfigDict()
  c.encode.block_frames = 64  # frames per encoded block (plus a halo of earlier frames)
  c.encode.batch_blocks = 8  # blocks per jitted call (global; divides over the data axes)
  c.mesh = common.mesh_config("data")
  return c
