"""Phase 3: imagination training of policy and value heads with PMPO [P §3.3].

The phase-2 AgentModel (world model with agent tokens, BC policy, reward head) is frozen.
Only `ImagineHeads` train: the policy (initialised from the BC policy) and a new value
head. One jitted train step = rollout + update:

  1. Dataset contexts: C frames of latents, actions and the episode's task prime a KV
     cache (`inference.kv_cache.prime`); the agent embedding h_0 is read at the last one.
  2. For t = 0..H-1 (lax.scan): sample a_{t+1} ~ pi(.|h_t) (n = 0 head, no gradient),
     generate frame t+1 with K shortcut steps over the cache, commit it at the context
     noise level, which yields h_{t+1}; the reward head reads r_{t+1} at h_{t+1}.
  3. Lambda-returns ([P Eq 10], gamma 0.997) from the value head over h_0..h_H; value loss
     (two-hot) and PMPO ([P Eq 11], alpha 0.5, beta 0.3, reverse KL to the frozen BC policy)
     on the H decisions.

Terminations: the paper describes no continue head. Our choice: with
`imagine.terminal_reward` > 0, the first frame whose predicted reward reaches that value
is terminal, as in Dreamer 3 (`objectives.imagination.terminal_masks`): its reward counts
in the return of the step into it, which does not bootstrap past it; the terminal state
and all later ones carry weight 0 (their decisions and values are not trained) and later
rewards are 0. The toy world ends an episode exactly when the task reward is paid. 0
disables it (continue = 1 everywhere).

Loss scaling: the value loss is RMS-normalised like every other term [P §3];
the PMPO loss is not by default (`imagine.normalize_policy_loss`; [P App. F]: PMPO
needs no return or advantage normalisation).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from data_pipelines.envs.base import Action
from dreamer4 import runs
from dreamer4.errors import ConfigError
from dreamer4.inference import kv_cache
from dreamer4.models import heads as heads_lib
from dreamer4.models.agent import agent_embedding
from dreamer4.models.dynamics import Dynamics
from dreamer4.objectives import normalize
from dreamer4.objectives.imagination import lambda_returns, pmpo_loss, terminal_masks, value_loss
from dreamer4.training.phase import DataShapes, Phase

IMAGINE_FIELDS = ("latents", "actions_discrete", "action_labelled", "tasks")


def imagine_rollout(
  dyn: Dynamics,
  policy_params_fn,
  reward_head,
  batch,
  rng,
  *,
  context: int,
  horizon: int,
  k: int,
  context_noise: float,
  window: int,
):
  """Rolls the policy out in the frozen world model.

  Args:
    dyn: Dynamics with agent tokens.
    policy_params_fn: h [B, D] -> flat policy params [B, P] (the acting head).
    reward_head: RewardHead (n = 0 reads r_{t+1} at h_{t+1}).
    batch: latents [B, T, N, L] (T >= context), actions_discrete, action_labelled, tasks [B, T];
      the last `context` frames prime the model.
    context, horizon, k, context_noise, window: see the module docstring.

  Returns:
    dict: h_BHD [B, H+1, D] (h_0..h_H), actions_BH (the sampled Action [B, H]: a_1..a_H),
    reward_BH [B, H] (r_1..r_H), latents_BHNL [B, H, N, L] generated frames.
  """
  spec = dyn.action_spec
  # The last `context` frames of the window: windows end at their start state (pad="start").
  z_BCNL = batch["latents"][:, -context:].astype(jnp.float32)
  B = z_BCNL.shape[0]
  tasks_B = batch["tasks"][:, -1].astype(jnp.int32)
  ctx_actions = jax.tree.map(lambda a: a[:, -context:], Action.from_window(batch))
  prime_rng, roll_rng = jax.random.split(rng)
  cache = kv_cache.init_cache(dyn, B, window)
  cache, agent0 = kv_cache.prime(
    dyn,
    cache,
    z_BCNL,
    ctx_actions,
    jax.random.normal(prime_rng, z_BCNL.shape),
    context_noise=context_noise,
    tasks_B=tasks_B,
    with_agent=True,
  )
  h0 = agent_embedding(agent0)

  def body(carry, key):
    cache, h = carry
    a_key, z_key, n_key = jax.random.split(key, 3)
    act = heads_lib.sample(spec, jax.lax.stop_gradient(policy_params_fn(h)), a_key)
    z0 = jax.random.normal(z_key, (B, dyn.num_latents, dyn.latent_dim), jnp.float32)
    z = kv_cache.denoise_frame(dyn, cache, z0, act, k=k)
    cache, agent = kv_cache.commit_frame(
      dyn,
      cache,
      z,
      jax.random.normal(n_key, z.shape),
      act,
      context_noise=context_noise,
      tasks_B=tasks_B,
      with_agent=True,
    )
    h_next = agent_embedding(agent)
    r = reward_head.predict(h_next, 0)
    return (cache, h_next), (h_next, act, r, z)

  _, (h_HBD, act_HB, r_HB, z_HBNL) = jax.lax.scan(body, (cache, h0), jax.random.split(roll_rng, horizon))
  sw = lambda a: jnp.swapaxes(a, 0, 1)
  return {
    "h_BHD": jnp.concatenate([h0[:, None], sw(h_HBD)], axis=1),
    "actions_BH": jax.tree.map(sw, act_HB),
    "reward_BH": sw(r_HB),
    "latents_BHNL": sw(z_HBNL),
  }


class ImaginePhase(Phase):
  """Phase 3 in the trainer (see dreamer4/training/phase.py `Phase`).

  Built from the shapes of its dataset (latents included) and the configs of the phase-2
  run (its world model `dyn_model_cfg`, its heads `agent_cfg`); `load_frozen` restores
  that run's AgentModel (config.agent_workdir).
  """

  name = "imagine"
  data_fields = IMAGINE_FIELDS
  # Every frame is a start state: a window ends at it, and slots before its episode's
  # first frame repeat that frame with the null, unlabelled action (data_pipelines/windows.py).
  window_pad = "start"

  def __init__(self, config, shapes: DataShapes, dyn_model_cfg, agent_cfg):
    self.validate(config)
    self.config = config
    ic = config.imagine
    N, L = shapes.latents()
    self.agent_def = runs.agent_model_def(dyn_model_cfg, agent_cfg, N, L, shapes.action_spec, shapes.num_tasks)
    self.model_def = runs.imagine_heads_def(self.agent_def, agent_cfg)
    self.window = int(dyn_model_cfg.context) or (ic.context + ic.horizon)
    self.agent_params = None  # load_frozen

  @staticmethod
  def validate(config) -> None:
    ic = config.imagine
    if ic.context < 1 or ic.horizon < 1:
      raise ConfigError("--config.imagine.context and --config.imagine.horizon must be >= 1")
    if ic.context > config.data.window:
      raise ConfigError(f"--config.imagine.context={ic.context} exceeds --config.data.window={config.data.window}")

  def load_frozen(self, store, mesh) -> ImaginePhase:
    """The phase-2 AgentModel of config.agent_workdir, restored onto `mesh`."""
    del store
    _, self.agent_params = runs.restore_model(self.config.agent_workdir, self.agent_def, mesh)
    return self

  def init_aux(self):
    return normalize.rms_init(("policy", "value"))

  def frozen(self):
    return {"agent": self.agent_params}

  def warm_start(self, params, shardings):
    """The policy starts as the phase-2 BC policy; the value head starts fresh."""
    del shardings
    # Copies: the train state is donated each step and must not alias the frozen prior.
    return dict(params, policy=jax.tree.map(jnp.copy, self.agent_params["policy"]))

  def _rollout_and_losses(self, params, batch, rng, frozen):
    ic = self.config.imagine
    agent = self.agent_def.merge(frozen["agent"])
    heads = self.model_def.merge(params)
    spec = agent.dynamics.action_spec
    roll = imagine_rollout(
      agent.dynamics,
      lambda h: heads.policy.params(h, 0),
      agent.reward,
      batch,
      rng,
      context=ic.context,
      horizon=ic.horizon,
      k=ic.k,
      context_noise=ic.context_noise,
      window=self.window,
    )
    h_BHD = jax.lax.stop_gradient(roll["h_BHD"])
    B, H1, D = h_BHD.shape
    H = H1 - 1
    r_BH = jnp.concatenate([jnp.zeros((B, 1)), roll["reward_BH"]], axis=1)  # r_t of the step into t
    # The terminal frame and later ones carry weight 0; the step into it has continue 0.
    r_BH, c_BH, w_BH = terminal_masks(r_BH, float(ic.terminal_reward))
    v_BH = heads.value.predict(h_BHD.reshape(B * H1, D), 0).reshape(B, H1)
    R_BH = lambda_returns(r_BH, jax.lax.stop_gradient(v_BH), c_BH, gamma=ic.gamma, lam=ic.lam)  # [B, H]
    mask = (w_BH[:, :H] > 0).reshape(-1)  # decisions and values at frames 0..H-1
    h_ND = h_BHD[:, :H].reshape(B * H, D)
    v_loss, v_metrics = value_loss(heads.value, h_ND, R_BH.reshape(-1), mask)
    adv = (R_BH - v_BH[:, :H]).reshape(-1)
    pol_params = heads.policy.params(h_ND, 0)
    actions = jax.tree.map(lambda a: a.reshape((B * H,) + a.shape[2:]), roll["actions_BH"])
    logp = heads_lib.log_prob(spec, pol_params, actions)
    prior = jax.lax.stop_gradient(agent.policy.params(h_ND, 0))
    kl = heads_lib.kl(spec, pol_params, prior)
    p_loss, p_metrics = pmpo_loss(logp, kl, adv, alpha=ic.alpha, beta=ic.beta, mask_N=mask)
    metrics = dict(
      v_metrics,
      **p_metrics,
      imagined_reward=jnp.mean(jnp.sum(r_BH, axis=1)),
      imagined_success=jnp.mean(jnp.any(r_BH >= 0.5, axis=1).astype(jnp.float32)),
      policy_entropy=jnp.mean(heads_lib.entropy(spec, pol_params)),
    )
    return p_loss, v_loss, metrics

  def loss_fn(self, params, aux, batch, rng, frozen):
    """Value loss / its running RMS, plus the PMPO loss as is (or / its RMS, if configured).

    The two touch disjoint parameters but share the global gradient clip. PMPO starts
    near 0 with a random sign (policy = prior), so dividing it by its RMS inflates a
    noisy gradient that then dominates the clip ([P App. F]: no return or
    advantage normalisation for PMPO).
    """
    p_loss, v_loss, metrics = self._rollout_and_losses(params, batch, rng, frozen)
    decay = self.config.loss.rms_decay
    if self.config.imagine.normalize_policy_loss:
      p_loss, aux = normalize.rms_normalize(aux, "policy", p_loss, decay=decay)
    n_v, aux = normalize.rms_normalize(aux, "value", v_loss, decay=decay)
    return p_loss + n_v, (aux, metrics)

  def eval_fn(self, params, batch, frozen):
    _, _, metrics = self._rollout_and_losses(params, batch, jax.random.key(0), frozen)
    return metrics

  def summary_fn(self, params, batch, rng, frozen):
    return {}


def make_phase(config, store, mesh) -> ImaginePhase:
  """Phase 3 on `store`, in the frozen world model of the phase-2 run in config.agent_workdir."""
  agent_cfg, dyn_cfg = runs.agent_configs(config.agent_workdir, flag="--config.agent_workdir")
  shapes = DataShapes.of_store(store, latents=True)
  return ImaginePhase(config, shapes, dyn_cfg.model, agent_cfg.agent).load_frozen(store, mesh)
