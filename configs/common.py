"""Pieces every phase config shares: mesh presets, the logical-axis rule table, optimiser defaults.

Nothing here touches devices; these are plain ml_collections values.
"""

from __future__ import annotations

import ml_collections

MESH_AXES = ("data", "fsdp", "tensor")

# Logical axis name -> mesh axes. One small table (t5x/maxtext style); every parameter
# and activation in the models carries these names. Anything not listed is replicated.
LOGICAL_AXIS_RULES = (
  ("batch", ("data", "fsdp")),  # activations and data: split over both data-parallel axes
  ("embed", "fsdp"),  # model width: FSDP shards parameters and optimiser state here
  ("mlp", "tensor"),  # MLP hidden
  ("heads", "tensor"),  # attention heads
  ("kv_heads", "tensor"),  # GQA key/value heads
  ("vocab", None),  # embedding-table rows
  ("head_dim", None),
  ("norm", None),
  ("layers", None),  # the stacked axis of scanned transformer layers
)

# Mesh presets, as (data, fsdp, tensor); -1 fills the remaining devices.
MESH_PRESETS = {
  "single": (1, 1, 1),  # one device, local debugging
  "data": (-1, 1, 1),  # pure data parallel over every device (default)
  "cpu8": (2, 2, 2),  # 8 fake CPU devices in tests
  "gpu8": (1, -1, 1),  # an 8-GPU node: FSDP within the node
  "tpu_fsdp": (1, -1, 1),  # TPU v5p slices: FSDP with batch 1 per device, as in the paper
}


def mesh_config(preset: str = "data") -> ml_collections.ConfigDict:
  """Mesh settings; `shape` wins over `preset` when set."""
  c = ml_collections.ConfigDict()
  c.preset = preset  # name in configs.common.MESH_PRESETS
  c.shape = ml_collections.FieldReference(None, field_type=tuple)  # explicit (data, fsdp, tensor); -1 fills
  c.num_devices = 0  # use only the first N devices (0: all; e.g. 1 for one-device debugging)
  return c


def optim_config(lr: float = 3e-4, warmup_steps: int = 100) -> ml_collections.ConfigDict:
  """AdamW with linear warm-up and cosine decay (non-paper choice: the paper states no optimiser)."""
  c = ml_collections.ConfigDict()
  c.lr = lr  # peak learning rate
  c.warmup_steps = warmup_steps  # linear warm-up from 0
  c.decay = "cosine"  # "cosine" (to end_lr_frac * lr at num_steps) or "constant"
  c.end_lr_frac = 0.1  # final lr as a fraction of the peak
  c.b1 = 0.9  # Adam beta1
  c.b2 = 0.99  # Adam beta2
  c.eps = 1e-8  # Adam epsilon
  c.weight_decay = 0.01  # decoupled weight decay (matrices only)
  c.grad_clip = 1.0  # global-norm gradient clipping; 0 disables
  return c


def train_config(
  *,
  batch_size: int,
  num_steps: int,
  eval_every: int,
  summary_every: int,
  checkpoint_every: int = 500,
  log_every: int = 50,
) -> ml_collections.ConfigDict:
  """The trainer's loop settings, shared by every phase."""
  c = ml_collections.ConfigDict()
  c.seed = 0  # model init and step randomness
  c.batch_size = batch_size  # GLOBAL batch of windows (split over data x fsdp and over processes)
  c.num_steps = num_steps  # optimiser steps (the schedule decays to the end)
  c.stop_at_step = 0  # stop (with a checkpoint) at this step as if interrupted; 0: never
  c.log_every = log_every  # scalar metrics and progress
  c.eval_every = eval_every  # held-out evaluation (0: only at the end)
  c.summary_every = summary_every  # images / videos to TensorBoard (0: only at the end)
  c.checkpoint_every = checkpoint_every  # async Orbax checkpoint (state + data iterators)
  c.keep_checkpoints = 3  # checkpoints kept
  c.async_checkpoints = True  # save in the background
  c.max_nonfinite = 20  # stop once this many steps in a row were non-finite (checked at log steps)
  c.profile_steps = 0  # steps captured by clu's Profile hook (0: off)
  c.profile_first = 20  # first profiled step (relative to the start)
  return c
