"""Phase 1a: the causal tokenizer (MAE + tanh bottleneck, MSE + 0.2 LPIPS, RMS-normalised)."""

from __future__ import annotations

import re

import jax.numpy as jnp
from flax import nnx

from dreamer4.errors import ConfigError
from dreamer4.evaluation import frame_state
from dreamer4.models import lpips
from dreamer4.models.tokenizer import Tokenizer
from dreamer4.objectives import normalize
from dreamer4.objectives.tokenizer import tokenizer_loss
from dreamer4.training import metrics as mt
from dreamer4.training.phase import DataShapes, Phase
from dreamer4.training.state import ModelDef

_PER_STEP = re.compile(r"_h\d+$")  # a parser metric's per-horizon-step entry


class TokenizerPhase(Phase):
  """Plugs the tokenizer into the trainer (see dreamer4/training/phase.py `Phase`).

  Built from the frame shape (`shapes.frame_shape`); its one frozen input, the LPIPS
  network, is loaded by `frozen` when the loss uses it.
  """

  name = "tokenizer"
  data_fields = ("frames",)

  def __init__(self, config, shapes: DataShapes):
    self.validate(config)
    self.config = config
    frame_shape = tuple(shapes.frame_shape)
    self.frame_shape = frame_shape
    try:
      self.model_def = ModelDef.build(lambda rng: Tokenizer.from_config(config.model, frame_shape, nnx.Rngs(rng)))
    except ValueError as e:
      raise ConfigError(f"{e} (dataset {shapes.path} has frames {frame_shape})") from None
    self._lpips = None
    # The env's frame parser (a module, or None): eval_fn's game-state metrics of reconstructions.
    self.state_parser = frame_state.parser_for_env(shapes.env, frame_shape)

  def init_aux(self):
    return normalize.rms_init(("mse", "lpips"))

  def frozen(self):
    if not self.config.loss.lpips_weight:  # no LPIPS term: no VGG weights either
      return {}
    if self._lpips is None:
      self._lpips = lpips.load_lpips_params()
    return {"lpips": self._lpips}

  def loss_fn(self, params, aux, batch, rng, frozen):
    c = self.config.loss
    model = self.model_def.merge(params)
    return tokenizer_loss(
      model,
      frozen.get("lpips"),
      batch["frames"],
      aux,
      rng,
      lpips_weight=c.lpips_weight,
      lpips_frames=c.lpips_frames,
      max_mask_prob=c.max_mask_prob,
      rms_decay=c.rms_decay,
      valid_BT=batch.get("valid_T"),
    )

  def eval_fn(self, params, batch, frozen):
    """PSNR (dB) and MSE of *unmasked* reconstructions on held-out episodes. Where the store's
    env has a frame parser (dreamer4/evaluation/frame_state.py) also what the reconstruction
    gets right once parsed back into game state, tagged `recon` (craftax: craftax_block_acc_recon,
    the map cells with the right block, and the parser's other shares; toy: agent_acc_recon, ...):
    a ceiling for every world-model rollout decoded by this tokenizer."""
    model = self.model_def.merge(params)
    frames = batch["frames"].astype(jnp.float32) / 255.0
    recon = model(frames)["recon_BTHWC"]
    shown = jnp.clip(recon, 0, 1)  # the reconstruction as an image
    flat = lambda x: x.reshape((-1,) + x.shape[2:])
    valid = batch.get("valid_T")
    w_N = jnp.ones(frames.shape[:2]).reshape(-1) if valid is None else valid.reshape(-1).astype(jnp.float32)
    mean = lambda x_N: jnp.sum(x_N * w_N) / jnp.maximum(jnp.sum(w_N), 1.0)  # real frames only
    out = {
      "psnr": mean(mt.psnr(flat(shown), flat(frames))),
      "mse": mean(jnp.mean(flat((recon - frames) ** 2), axis=(1, 2, 3))),
    }
    if self.state_parser is not None:
      valid_BT = jnp.ones(frames.shape[:2], bool) if valid is None else valid.astype(bool)
      truth = self.state_parser.parse(batch["frames"])
      state = frame_state.rollout_state_metrics(self.state_parser, truth, shown, valid_BT, "recon")
      # Pooled over the window's frames only (the per-position `_hXX` entries say nothing here).
      out.update({name: value for name, value in state.items() if not _PER_STEP.search(name)})
    return out

  def summary_fn(self, params, batch, rng, frozen):
    """Image grids: input, masked input, reconstruction from the masked input (first frames)."""
    model = self.model_def.merge(params)
    frames = batch["frames"][:8, -1:].astype(jnp.float32) / 255.0  # the last frame of up to 8 windows
    out = model(frames, mask_rng=rng, max_mask_prob=self.config.loss.max_mask_prob)
    first = lambda x: jnp.clip(x[:, 0], 0, 1)
    return {
      "input": first(frames),
      "masked_input": first(out["masked_input_BTHWC"]),
      "reconstruction": first(out["recon_BTHWC"]),
    }


def make_phase(config, store, mesh=None) -> TokenizerPhase:
  """Phase 1a on the frames of `store` (no frozen inputs to place on `mesh`)."""
  return TokenizerPhase(config, DataShapes.of_store(store)).load_frozen(store, mesh)
