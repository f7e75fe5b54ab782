"""Phase 1b: interactive dynamics on frozen-tokenizer latents, trained with shortcut forcing.

The train step reads latents (written into the store by the encode job), never pixels.
Evaluation generates `eval.horizon` frames after `eval.context_frames` true ones, decodes
them with the frozen tokenizer, and reports PSNR/SSIM per horizon step for each number
of sampling steps K, plus the same rollout with shuffled actions (action sensitivity). Envs
whose frames parse back into game state (a parser in their registry entry,
data_pipelines/envs `EnvSpec.state_parser`) also get what the rollouts get right, from the
parsed frames (dreamer4/evaluation/frame_state.py).
"""

from __future__ import annotations

import dataclasses
import re

import jax
import jax.numpy as jnp

from data_pipelines.envs.base import Action
from dreamer4 import runs
from dreamer4.errors import ConfigError, UserError
from dreamer4.evaluation import frame_state
from dreamer4.evaluation import video_metrics as vm
from dreamer4.inference.sampler import generate
from dreamer4.models.dynamics import make_sampling_fn, make_training_fn
from dreamer4.objectives import normalize
from dreamer4.objectives.shortcut import shortcut_loss
from dreamer4.training.phase import DataShapes, Phase
from dreamer4.training.state import ModelDef


def dynamics_loss(model_def: ModelDef, config, params, aux, batch, rng):
  """The phase's train loss: shortcut forcing on the batch's latents, RMS-normalised.

  Returns (normalised loss, (aux, metrics)) as the trainer's `Phase.loss_fn` does; also
  used by benchmarks/train_step.py, which needs no tokenizer.
  """
  c = config
  model = model_def.merge(params)
  apply_fn = make_training_fn(model, Action.from_window(batch))
  loss, metrics = shortcut_loss(
    apply_fn,
    batch["latents"],
    rng,
    k_max=c.model.k_max,
    bootstrap_fraction=c.loss.bootstrap_fraction,
    independent_fraction=c.loss.independent_fraction,
    ramp=c.loss.ramp,
    valid_BT=batch.get("valid_T"),
  )
  norm, aux = normalize.rms_normalize(aux, "dynamics", loss, decay=c.loss.rms_decay)
  return norm, (aux, dict(metrics, shortcut_loss=loss))


class DynamicsPhase(Phase):
  """Plugs the dynamics model into the trainer (see dreamer4/training/phase.py `Phase`).

  Built from the latent shape (`shapes.latent_shape`, the tokenizer's) and the action
  spec; `load_frozen` adds the frozen tokenizer that evaluation decodes with.
  """

  name = "dynamics"
  data_fields = ("latents", "actions_discrete", "action_labelled")

  def __init__(self, config, shapes: DataShapes):
    self.validate(config)
    self.config = config
    # The env's frame parser (a module, or None): eval_fn's game-state metrics.
    self.state_parser = frame_state.parser_for_env(shapes.env, shapes.frame_shape)
    self.num_latents, self.latent_dim = shapes.latents()
    self.model_def = runs.dynamics_model_def(config.model, self.num_latents, self.latent_dim, shapes.action_spec)
    self.tok_def = self.tok_params = None  # load_frozen
    # K = 4 (the metric of record), shuffled actions and the references on every evaluation
    # batch; the other K of eval.sampling_steps (K = 64 is most of the cost) on the first N.
    self.eval_sweep_batches = int(config.eval.sweep_batches)

  @staticmethod
  def validate(config) -> None:
    m = config.model
    long_window = int(config.data.long_window)
    if m.context and long_window and long_window <= m.context:
      raise ConfigError(
        f"--config.data.long_window={long_window} must exceed --config.model.context="
        f"{m.context} ([P §3.4]: batch length > context length)"
      )
    ev = config.eval
    if ev.context_frames + ev.horizon > (long_window or config.data.window):
      raise ConfigError(
        f"--config.eval.context_frames + --config.eval.horizon = {ev.context_frames + ev.horizon} "
        f"exceeds the evaluation window {long_window or config.data.window} (data.long_window)"
      )

  def load_frozen(self, store, mesh) -> DynamicsPhase:
    """The frozen tokenizer (config.tokenizer_workdir) on `mesh`; UserError unless `store` holds its latents."""
    workdir = self.config.tokenizer_workdir
    tcfg, self.tok_def, self.tok_params, step = runs.load_tokenizer(workdir, mesh, store.frame_shape)
    attrs = runs.latents_attrs(workdir, step, tcfg)
    if not runs.latents_ready(store, attrs):
      have = store.array_attrs(runs.LATENTS)
      raise UserError(
        f"dataset {store.path} holds no complete latents of tokenizer {workdir} step "
        f"{step} (found: {have}); run python -m dreamer4.main --config=configs/encode.py "
        f"--config.data.path={store.path} --config.tokenizer_workdir={workdir}"
      )
    return self

  def init_aux(self):
    return normalize.rms_init(("dynamics",))

  def frozen(self):
    return {"tokenizer": self.tok_params}

  def loss_fn(self, params, aux, batch, rng, frozen):
    del frozen  # the step never decodes to pixels
    return dynamics_loss(self.model_def, self.config, params, aux, batch, rng)

  # ---------------------------------------------------------------- evaluation

  def _rollouts(self, params, tok_params, batch, rng, k: int, shuffle_actions: bool = False):
    """Decoded (truth, generated) frames [B, H, h, w, c] for one K, and the latent error [B, H]."""
    ev, m = self.config.eval, self.config.model
    C, H = ev.context_frames, ev.horizon
    z_BTNL = batch["latents"][:, : C + H]
    actions = jax.tree.map(lambda a: a[:, : C + H], Action.from_window(batch))
    if shuffle_actions:  # another window's actions: the rollout should get clearly worse
      actions = jax.tree.map(lambda a: jnp.roll(a, 1, axis=0), actions)
    tokenizer = self.tok_def.merge(tok_params)
    z_BHNL, gen = rollout(
      self.model_def.merge(params),
      tokenizer,
      z_BTNL[:, :C],
      actions,
      rng,
      horizon=H,
      k=k,
      k_max=m.k_max,
      context_noise=ev.context_noise,
      window=m.context or (C + H),
    )
    truth = tokenizer.decode(z_BTNL)[:, C:]
    return truth, gen, frame_latent_mse(z_BHNL, z_BTNL[:, C:])

  def _valid_BH(self, batch):
    """bool [B, H]: horizon frames whose truth is real, not padding past an episode's end
    (the batch's `valid_T`; all valid when the batch has none)."""
    C, H = self.config.eval.context_frames, self.config.eval.horizon
    valid_T = batch.get("valid_T")
    if valid_T is None:
      return jnp.ones((batch["latents"].shape[0], H), bool)
    return valid_T[:, C : C + H].astype(bool)

  def _truth_state(self, batch, truth):
    """Parsed true horizon frames [B, H]: the real frames when the batch carries them, else
    the decoded true latents (the frames PSNR compares against)."""
    C, H = self.config.eval.context_frames, self.config.eval.horizon
    frames = batch.get("frames")
    return self.state_parser.parse(frames[:, C : C + H] if frames is not None else truth)

  def eval_fn(self, params, batch, frozen, sweep: bool = True):
    """Per-batch means over the horizon frames whose truth is valid (`valid_T`), with their
    weights (`_weights`: the valid frames each mean is over, so the trainer pools frames across
    batches rather than averaging the batches' means).

    For each K (only K = 4 when not `sweep`): PSNR, SSIM, latent MSE (per horizon step for
    K=4); shuffled actions (K=4)
    and the hold-last-frame reference. Where the store's env has a frame parser
    (`state_parser`, dreamer4/evaluation/frame_state.py) also what the generation gets right
    [P §4.2], from frames parsed back into game state, per horizon step (`_hXX`) and over
    the horizon: for every K (`_k<K>`), for K=4 with shuffled actions (`_k4_shuffled`) and
    for the held frame (`_hold`), plus the parser's extra references. Toy (toy_state.py):
    agent_acc (agent cell), goal_persist (true goal cells still shown as the right kind),
    distractor_acc / distractor_f1 (distractor map); agent_acc_random_walk (uniform random
    actions from the last context frame's cell), toy_truth_goal_cells /
    toy_truth_distractor_cells (whether the truth parses). Craftax (craftax_state.py):
    craftax_block_acc (map cells with the right block), craftax_overlay_acc,
    craftax_inventory_acc, craftax_inventory_exact, craftax_presence_acc,
    craftax_intrinsics_acc, craftax_table_near_acc; craftax_truth_daylight /
    craftax_truth_night (whether the truth lies where the parse is exact).
    """
    ev = self.config.eval
    C, H = ev.context_frames, ev.horizon
    valid_BH = self._valid_BH(batch)
    mean = lambda x_BH: vm.masked_mean(x_BH, valid_BH)
    mean_H = lambda x_BH: vm.masked_mean(x_BH, valid_BH, axis=0)
    out = {}
    parser, truth_state = self.state_parser, None
    key = jax.random.key(0)  # the same noise for every K and for shuffled actions
    for k in ev.sampling_steps if sweep else [k for k in ev.sampling_steps if int(k) == 4]:
      truth, gen, lat_BH = self._rollouts(params, frozen["tokenizer"], batch, key, int(k))
      p_BH, s_BH = vm.psnr_BT(gen, truth), vm.ssim_BT(gen, truth)
      out[f"psnr_k{k}"], out[f"ssim_k{k}"], out[f"latent_mse_k{k}"] = mean(p_BH), mean(s_BH), mean(lat_BH)
      if int(k) == 4:
        p_H, s_H, lat_H = mean_H(p_BH), mean_H(s_BH), mean_H(lat_BH)
        for h in range(H):
          out[f"psnr_k4_h{h + 1:02d}"] = p_H[h]
          out[f"ssim_k4_h{h + 1:02d}"] = s_H[h]
          out[f"latent_mse_k4_h{h + 1:02d}"] = lat_H[h]
      if parser is not None:
        truth_state = self._truth_state(batch, truth) if truth_state is None else truth_state
        out.update(frame_state.rollout_state_metrics(parser, truth_state, gen, valid_BH, f"k{k}"))
    truth, gen, lat_BH = self._rollouts(params, frozen["tokenizer"], batch, key, 4, shuffle_actions=True)
    out["latent_mse_k4_shuffled_actions"] = mean(lat_BH)
    out["psnr_k4_shuffled_actions"] = mean(vm.psnr_BT(gen, truth))
    out["ssim_k4_shuffled_actions"] = mean(vm.ssim_BT(gen, truth))
    # Per horizon step too: the action decides the next frame, but its effect can fade as
    # generated frames become the history.
    lat_H = mean_H(lat_BH)
    for h in range(H):
      out[f"latent_mse_k4_shuffled_actions_h{h + 1:02d}"] = lat_H[h]
    if parser is not None:
      truth_state = self._truth_state(batch, truth) if truth_state is None else truth_state
      out.update(frame_state.rollout_state_metrics(parser, truth_state, gen, valid_BH, "k4_shuffled"))
    # Reference: hold the last context frame for the whole horizon (no model). A dynamics
    # model that predicts motion beats it; one that only copies does not. The last context
    # frame is always valid (windows start inside episodes).
    z_last = jnp.repeat(batch["latents"][:, C - 1 : C], H, axis=1)
    tokenizer = self.tok_def.merge(frozen["tokenizer"])
    held = tokenizer.decode(z_last)
    out["psnr_hold_last_frame"] = mean(vm.psnr_BT(held, truth))
    out["psnr_hold_last_frame_h01"] = vm.masked_mean(vm.psnr_BT(held[:, :1], truth[:, :1]), valid_BH[:, :1])
    lat_hold_B1 = frame_latent_mse(z_last[:, :1], batch["latents"][:, C : C + 1])
    out["latent_mse_hold_last_frame_h01"] = vm.masked_mean(lat_hold_B1, valid_BH[:, :1])
    if parser is not None:
      # The held frames' parse over the horizon (the frames the hold PSNR scores), and the env's
      # extra references (toy: the random walk an action-blind model falls to) from the last
      # context frame: the real one when the batch carries frames, else the first held one.
      frames = batch.get("frames")
      out.update(
        frame_state.reference_state_metrics(
          parser, truth_state, held, valid_BH, last_frames=frames[:, C - 1] if frames is not None else None
        )
      )
    out["_weights"] = _frame_weights(out, valid_BH)
    return out

  def summary_fn(self, params, batch, rng, frozen):
    """Truth (top) and K=4 generation (bottom) strips, one pair per video, [R, H, h, w, c]."""
    n = self.config.eval.videos
    small = jax.tree.map(lambda a: a[:n], batch)
    truth, gen, _ = self._rollouts(params, frozen["tokenizer"], small, rng, 4)
    rows = jnp.stack([truth, gen], axis=1).reshape((-1,) + truth.shape[1:])
    return {"rollout_truth_vs_generated": jnp.clip(rows, 0.0, 1.0)}


def rollout(model, tokenizer, context_z_BCNL, actions, rng, *, horizon: int, k: int, k_max: int, context_noise, window):
  """Generates `horizon` frames after the true context latents and decodes them.

  The sampler (`inference.sampler.generate`) runs the dynamics `model` with `actions` (an
  Action [B, C + horizon]); the tokenizer decodes the generated frames after the context, so
  a decoder with time layers reads the context as it would read true frames. Shared by the
  phase's evaluation and the world-model probe (dreamer4/evaluation/probe.py).

  Returns:
    (z_BHNL float32, the generated latents; frames [B, horizon, h, w, c] in [0, 1], decoded).
  """
  out = generate(
    make_sampling_fn(model),
    context_z_BCNL,
    actions,
    rng,
    horizon=horizon,
    k=k,
    k_max=k_max,
    context_noise=context_noise,
    window=window,
  )
  C = context_z_BCNL.shape[1]
  gen_BTNL = jnp.concatenate([context_z_BCNL.astype(out["z_BHNL"].dtype), out["z_BHNL"]], axis=1)
  return out["z_BHNL"], tokenizer.decode(gen_BTNL)[:, C:]


def frame_latent_mse(a_BTNL, b_BTNL):
  """Mean squared latent error of each frame, float32 [B, T] (the decoder-free error)."""
  return jnp.mean(jnp.square(a_BTNL.astype(jnp.float32) - b_BTNL.astype(jnp.float32)), axis=(2, 3))


def _frame_weights(metrics: dict, valid_BH) -> dict:
  """The number of valid frames behind each metric: those of horizon step h for a `_hXX`
  name, all valid horizon frames otherwise. (Ratios with another denominator, e.g.
  goal_persist over the true goal cells, are pooled by frames too: near, not exact.)"""
  v = jnp.asarray(valid_BH, jnp.float32)
  n_H, n = jnp.sum(v, axis=0), jnp.sum(v)
  out = {}
  for name in metrics:
    m = re.search(r"_h(\d\d)$", name)
    out[name] = n_H[int(m.group(1)) - 1] if m else n
  return out


def make_phase(config, store, mesh) -> DynamicsPhase:
  """Phase 1b on the latents in `store` of the tokenizer in config.tokenizer_workdir."""
  tcfg = runs.tokenizer_config(config.tokenizer_workdir)
  shapes = dataclasses.replace(
    DataShapes.of_store(store), latent_shape=(int(tcfg.model.num_latents), int(tcfg.model.latent_dim))
  )
  return DynamicsPhase(config, shapes).load_frozen(store, mesh)
