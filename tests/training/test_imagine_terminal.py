"""Phase 3 terminations on the real ImaginePhase losses: the terminal frame (the first whose
predicted reward reaches `imagine.terminal_reward`) and every later frame carry weight 0.

The world model is a tiny untrained AgentModel and the rollout is replaced by a fixed one,
so the rewards (and hence the terminal frame) are chosen by the test."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from data_pipelines.envs.base import Action, ActionComponent, ActionSpec

H, B, D = 5, 2, 32  # D: the tiny dynamics width


@pytest.fixture(scope="module")
def tiny_phase():
  """An ImaginePhase over a random tiny AgentModel (no checkpoints), plus its params."""
  from configs import agent as agent_config
  from configs import dynamics as dynamics_config
  from configs import imagine
  from dreamer4.phases.imagine import ImaginePhase
  from dreamer4.training.phase import DataShapes

  cfg = imagine.get_config("tiny")
  cfg.imagine.horizon = H
  cfg.imagine.terminal_reward = 0.5
  a = agent_config.agent_config()
  a.mtp, a.head_hidden, a.head_layers = 2, 16, 1
  dyn_model = dynamics_config.model_config("tiny")
  spec = ActionSpec((ActionComponent("move", "discrete", 5),))
  # Built from shapes (no store, no phase-2 run); the frozen agent is a fresh one.
  phase = ImaginePhase(cfg, DataShapes(path="(test)", action_spec=spec, latent_shape=(4, 4)), dyn_model, a)
  phase.agent_params = phase.agent_def.init_params(jax.random.key(0))
  dyn_abstract = phase.agent_def.merge(phase.agent_def.abstract_params).dynamics
  assert dyn_abstract.width == D
  params = phase.warm_start(phase.model_def.init_params(jax.random.key(1)), None)
  # The value head's output layer starts at zero (every value 0, the loss independent of h):
  # random output weights make the value loss read h.
  w = params["value"]["mlp"]["w_out"]
  params["value"]["mlp"]["w_out"] = 0.3 * jax.random.normal(jax.random.key(2), w.shape, w.dtype)
  return phase, params


def _losses(phase, params, h_BHD, reward_BH, disc_BHA, monkeypatch):
  """(policy loss, value loss, metrics) of `_rollout_and_losses` on a fixed rollout."""
  from dreamer4.phases import imagine as imagine_mod

  roll = {
    "h_BHD": h_BHD,
    "actions_BH": Action.labelled_from(disc_BHA),
    "reward_BH": reward_BH,
    "latents_BHNL": jnp.zeros((B, H, 4, 4)),
  }
  monkeypatch.setattr(imagine_mod, "imagine_rollout", lambda *args, **kwargs: roll)
  out = phase._rollout_and_losses(params, {}, jax.random.key(0), {"agent": phase.agent_params})
  return jax.tree.map(np.asarray, out)


def _rollout(seed):
  k = jax.random.split(jax.random.key(seed), 2)
  h_BHD = jax.random.normal(k[0], (B, H + 1, D))
  disc_BHA = jax.random.randint(k[1], (B, H, 1), 0, 5)
  return h_BHD, disc_BHA


def test_terminal_frame_and_later_frames_do_not_count(tiny_phase, monkeypatch):
  phase, params = tiny_phase
  h_BHD, disc_BHA = _rollout(0)
  # r_1..r_H; with r_0 prepended the rewards are [0, 0, 0, 1, 0, 0]: frame 3 is terminal.
  reward_BH = jnp.array([[0.0, 0.0, 1.0, 0.0, 0.0]] * B)
  p0, v0, m0 = _losses(phase, params, h_BHD, reward_BH, disc_BHA, monkeypatch)
  # The terminal frame's state and decision, later frames, later rewards and later actions
  # leave both losses unchanged (old code: frame 3 still counted and bootstrapped from v_4).
  h2 = h_BHD.at[:, 3:].set(jax.random.normal(jax.random.key(9), (B, H - 2, D)) * 3.0)
  d2 = disc_BHA.at[:, 3:].set((disc_BHA[:, 3:] + 2) % 5)
  r2 = reward_BH.at[:, 3:].set(jnp.array([1.0, 0.7]))
  p1, v1, m1 = _losses(phase, params, h2, r2, d2, monkeypatch)
  np.testing.assert_allclose(p1, p0, rtol=1e-6)
  np.testing.assert_allclose(v1, v0, rtol=1e-6)
  np.testing.assert_allclose(m1["return_mean"], m0["return_mean"], rtol=1e-6)
  np.testing.assert_allclose(m1["imagined_reward"], 1.0, rtol=1e-6)  # post-terminal rewards are zeroed
  # Frame 2 (the step into the terminal) counts.
  h3 = h_BHD.at[:, 2].add(1.0)
  p3, v3, _ = _losses(phase, params, h3, reward_BH, disc_BHA, monkeypatch)
  assert abs(float(p3 - p0)) > 1e-5 and abs(float(v3 - v0)) > 1e-5


def test_terminal_at_first_step_leaves_one_target_equal_to_its_reward(tiny_phase, monkeypatch):
  phase, params = tiny_phase
  h_BHD, disc_BHA = _rollout(1)
  # Frame 1 is terminal: only the decision at frame 0 counts, with target R_0 = r_1 = 1 exactly
  # (no bootstrap from v_1); old code also counted frame 1 with target r_2 + gamma * v_2 ...
  reward_BH = jnp.array([[1.0, 0.0, 0.0, 0.0, 0.0]] * B)
  _, v_loss, m = _losses(phase, params, h_BHD, reward_BH, disc_BHA, monkeypatch)
  np.testing.assert_allclose(m["return_mean"], 1.0, rtol=1e-6)
  heads = phase.model_def.merge(params)
  v0_B = np.asarray(heads.value.predict(h_BHD[:, 0], 0))
  np.testing.assert_allclose(m["value_mae"], np.mean(np.abs(v0_B - 1.0)), rtol=1e-5)
  want = np.mean(np.asarray(heads.value.loss(h_BHD[:, 0], jnp.ones(B), 0)))
  np.testing.assert_allclose(v_loss, want, rtol=1e-5)
