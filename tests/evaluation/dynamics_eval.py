"""The dynamics phase's eval_fn (dreamer4/phases/dynamics.py) on given frames: a stand-in
tokenizer whose latents are the frames, and a stand-in model whose rollouts are given frames,
so that the frame-state metrics of the eval can be checked against answers computed by hand
(the real model and tokenizer are exercised by tests/training/test_agent_phases.py)."""

import jax
import jax.numpy as jnp
import numpy as np

from data_pipelines.envs.base import ActionComponent, ActionSpec
from dreamer4.phases.dynamics import DynamicsPhase
from dreamer4.training.phase import DataShapes


class FrameTokenizer:
  """Latents [B, T, S*S, 3] are the frames (float in [0, 1]): decode reshapes them back."""

  def __init__(self, size: int):
    self.size = size

  def merge(self, params):
    del params
    return self

  def decode(self, z):
    return z.reshape(z.shape[:2] + (self.size, self.size, 3))


class _Phase(DynamicsPhase):
  """DynamicsPhase whose rollouts are given: params = {"gen": frames [B, H, S, S, 3] of every K,
  "shuffled": those of the shuffled-action rollout}; the truth is the batch's decoded latents."""

  def _rollouts(self, params, tok_params, batch, rng, k, shuffle_actions=False):
    del tok_params, rng, k
    C, H = self.config.eval.context_frames, self.config.eval.horizon
    truth = self.tok_def.decode(batch["latents"][:, C : C + H])
    gen = params["shuffled"] if shuffle_actions else params["gen"]
    return truth, gen, jnp.mean(jnp.square(gen - truth), axis=(2, 3, 4))


def make_phase(env: str, size: int, context: int, horizon: int, sampling_steps=(1, 4)) -> DynamicsPhase:
  """The dynamics phase of a store of `env` (its frame parser picked from the env registry by
  DynamicsPhase's own constructor), with the stand-ins above."""
  from configs import dynamics  # pylint: disable=g-import-not-at-top

  c = dynamics.get_config("tiny")
  c.eval.context_frames, c.eval.horizon, c.eval.sampling_steps = context, horizon, tuple(sampling_steps)
  c.data.window = max(int(c.data.window), context + horizon)
  c.data.long_window = max(int(c.data.long_window), context + horizon)
  spec = ActionSpec((ActionComponent("action", "discrete", 5),))
  shapes = DataShapes(path="test", frame_shape=(size, size, 3), action_spec=spec, latent_shape=(4, 8), env=env)
  phase = _Phase(c, shapes)
  phase.tok_def = FrameTokenizer(size)
  return phase


def eval_metrics(
  phase, frames_BTHWC, gen_BHWC, shuffled_BHWC, valid_BT=None, *, sweep=True, with_weights=False
) -> dict[str, float]:
  """phase.eval_fn (jitted, as the trainer runs it) on windows of uint8 frames [B, C + H, S, S, 3]:
  the latents are the frames, every K generates `gen_BHWC`, shuffled actions `shuffled_BHWC`.
  with_weights: also returns the metrics' weights (eval_fn's `_weights`)."""
  to_float = lambda x: jnp.asarray(np.asarray(x, np.float32) / 255.0)
  B, T = frames_BTHWC.shape[:2]
  batch = {"latents": to_float(frames_BTHWC).reshape(B, T, -1, 3)}
  if valid_BT is not None:
    batch["valid_T"] = jnp.asarray(valid_BT)
  params = {"gen": to_float(gen_BHWC), "shuffled": to_float(shuffled_BHWC)}
  out = jax.device_get(jax.jit(lambda p, b, f: phase.eval_fn(p, b, f, sweep=sweep))(params, batch, {"tokenizer": None}))
  weights = out.pop("_weights")
  assert set(weights) == set(out)  # every metric carries its weight
  m = {k: float(v) for k, v in out.items()}
  return (m, {k: float(v) for k, v in weights.items()}) if with_weights else m
