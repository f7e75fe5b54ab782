r"""Craftax-Classic sizes for the later phases: plain data, wired into the phase configs by them.

Dataset (1M frames at 64x64, mixed expert / weaker / random play):

  python -m data_pipelines.collect --env=craftax --output=runs/craftax/data   # --frames=1000000 default
  python -m data_pipelines.report runs/craftax/data

`sizes(name)` returns model, batch and mesh settings for one of:
  cpu    single-CPU debugging: a small model that steps in seconds on 2 cores.
  gpu8   one 8-GPU node: FSDP within the node (mesh preset "gpu8").
  tpu    a TPU v5p slice: FSDP with batch 1 per device as in the paper (mesh preset "tpu_fsdp").

Widths and depths are our choices (the paper gives totals, not per-layer sizes); batch sizes are
global (summed over devices) and must divide the data-parallel mesh axes.
"""

from __future__ import annotations

import ml_collections

from configs import common

NAMES = ("cpu", "gpu8", "tpu")
FRAME = (64, 64, 3)  # craftax frames as stored (data_pipelines/envs/craftax.py)
NUM_ACTIONS = 17  # one discrete component
NUM_TASKS = 22  # achievement names


def sizes(name: str = "cpu") -> ml_collections.ConfigDict:
  """Model, batch and mesh sizes for Craftax at 64x64.

  Args:
    name: "cpu", "gpu8" or "tpu".

  Returns:
    ConfigDict with frame/action/task shapes, `tokenizer`, `dynamics`, `batch` and `mesh` blocks.

  Raises:
    ValueError: for an unknown name.
  """
  if name not in NAMES:
    raise ValueError(f"configs/craftax.py: unknown size {name!r}; choose one of {', '.join(NAMES)}")
  c = ml_collections.ConfigDict()
  c.name = name
  c.frame_shape = FRAME
  c.num_actions = NUM_ACTIONS
  c.num_tasks = NUM_TASKS

  # Per name: (patch, latents, latent_dim, tok width, tok depth (enc = dec), dyn width, dyn depth, heads,
  #            tokenizer batch, dynamics batch, window (frames), mesh preset, dtype, remat)
  table = {
      "cpu": (8, 16, 16, 128, 4, 128, 4, 4, 8, 4, 16, "single", "float32", False),
      "gpu8": (8, 64, 16, 512, 8, 768, 16, 8, 128, 64, 32, "gpu8", "bfloat16", True),
      "tpu": (4, 128, 32, 1024, 16, 1536, 24, 16, 512, 256, 64, "tpu_fsdp", "bfloat16", True),
  }
  (patch, latents, latent_dim, tok_w, tok_d, dyn_w, dyn_d, heads, tok_b, dyn_b, window, mesh, dtype,
   remat) = table[name]

  c.tokenizer = ml_collections.ConfigDict()
  c.tokenizer.patch_size = patch  # pixels per patch side: (64 / patch)^2 patches per frame
  c.tokenizer.num_patches = (FRAME[0] // patch) * (FRAME[1] // patch)
  c.tokenizer.num_latents = latents  # latent tokens per frame
  c.tokenizer.latent_dim = latent_dim  # bottleneck channels (tanh)
  c.tokenizer.width = tok_w
  c.tokenizer.enc_depth = tok_d
  c.tokenizer.dec_depth = tok_d
  c.tokenizer.num_heads = heads
  c.tokenizer.mlp_dim = 4 * tok_w

  c.dynamics = ml_collections.ConfigDict()
  c.dynamics.width = dyn_w
  c.dynamics.depth = dyn_d
  c.dynamics.num_heads = heads
  c.dynamics.mlp_dim = 4 * dyn_w
  c.dynamics.window = window  # frames per training sequence

  c.batch = ml_collections.ConfigDict()
  c.batch.tokenizer = tok_b  # global windows per tokenizer step
  c.batch.dynamics = dyn_b  # global sequences per dynamics / agent step
  c.batch.imagination = dyn_b  # global imagined rollouts per step

  c.dtype = dtype
  c.remat = remat
  c.mesh = common.mesh_config(mesh)
  return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """`--config=configs/craftax.py:NAME` gives `sizes(NAME)` (default "cpu")."""
  return sizes(arg or "cpu")
