"""The trained agent acting in a real environment (and in the play page).

`WorldModelAgent` implements the env_eval policy protocol (begin/next). Each real
observation is encoded by the frozen tokenizer (with its training time window: the
previous frame and the current one), committed to the world model's KV cache at the
context noise level with the action that led to it and the episode's task, which yields
the agent embedding h_t (the same h_t as in training and imagination, see
tests/training/test_agent_phases.py), and the acting head (n = 0) samples the next action.
With `policy_workdir` (a phase-3 run) the imagination-trained policy acts; otherwise the
phase-2 BC policy (WM+BC).

Two compiled shapes: the first frame of an episode (tokenizer T = 1) and every later
frame (T = 2); the KV cache has static shapes.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from data_pipelines.envs.base import Action
from dreamer4 import runs
from dreamer4.aot import AotJit
from dreamer4.inference import kv_cache
from dreamer4.models import heads as heads_lib
from dreamer4.models.agent import agent_embedding
from dreamer4.phases.agent import context_pass
from dreamer4.training.state import to_abstract


def _single_device_mesh():
  from configs import common
  from dreamer4 import sharding as shd

  c = common.mesh_config("single")
  c.num_devices = 1
  return shd.make_mesh(c)


class WorldModelAgent:
  """A phase-2 (or phase-3) agent over a batch of real environments."""

  def __init__(self, agent_workdir: str, policy_workdir: str | None = None, *, name: str | None = None):
    self.name = name or ("dreamer4" if policy_workdir else "wm_bc")
    mesh = _single_device_mesh()
    acfg, dcfg, store, agent_def, params = runs.load_agent(agent_workdir, mesh)
    self.action_spec = store.action_spec
    self.frame_shape = tuple(store.frame_shape)
    tcfg, tok_def, tok_params, _ = runs.load_tokenizer(dcfg.tokenizer_workdir, mesh, store.frame_shape)
    if policy_workdir:
      heads_def = runs.imagine_heads_def(agent_def, acfg.agent)
      want = {"policy": to_abstract(heads_def.abstract_params, heads_def.param_shardings(mesh))["policy"]}
      _, trained = runs.restore(policy_workdir, want)
      params = dict(params, policy=trained["policy"])
    self._agent_def, self._params = agent_def, params
    self._tok_def, self._tok_params = tok_def, tok_params
    self._context_noise = float(acfg.agent.context_noise)
    self._window = int(dcfg.model.context) or 16
    self._tok_window = max(1, int(tcfg.model.context))
    self._step = AotJit(self._step_impl)
    self._cache = None

  def _step_impl(self, params, tok_params, cache, frames_BTHWC, action, tasks_B, rng):
    agent = self._agent_def.merge(params)
    tok = self._tok_def.merge(tok_params)
    z_BNL = tok.encode(frames_BTHWC.astype(jnp.float32) / 255.0)[:, -1]
    n_key, a_key = jax.random.split(rng)
    cache, agent_out = kv_cache.commit_frame(
      agent.dynamics,
      cache,
      z_BNL,
      jax.random.normal(n_key, z_BNL.shape),
      action,
      context_noise=self._context_noise,
      tasks_B=tasks_B,
      with_agent=True,
    )
    h = agent_embedding(agent_out)
    return cache, heads_lib.sample(agent.policy.spec, agent.policy.params(h, 0), a_key).discrete

  def step_compiles(self) -> int:
    """Executables of the acting step built so far (two shapes: an episode's first frame, later ones)."""
    return self._step.compiles

  def _run(self, frames_BTHWC, action, rng):
    key = jax.random.key(int(rng.integers(0, 2**31 - 1)))
    self._cache, disc = self._step(
      self._params, self._tok_params, self._cache, jnp.asarray(frames_BTHWC), action, self._tasks, key
    )
    return np.asarray(disc, np.int32)

  # env_eval's Policy protocol ---------------------------------------------------------

  def begin(self, frames_BHWC, tasks_B, rng):
    B = frames_BHWC.shape[0]
    agent = self._agent_def.merge(self._params)
    self._cache = kv_cache.init_cache(agent.dynamics, B, self._window)
    self._tasks = jnp.asarray(tasks_B, jnp.int32)
    self._prev = np.asarray(frames_BHWC)
    return self._run(self._prev[:, None], Action.unlabelled(self.action_spec, (B,)), rng)

  def next(self, frames_BHWC, actions_BA, rng):
    frames_BHWC = np.asarray(frames_BHWC)
    clip = np.stack([self._prev, frames_BHWC], axis=1) if self._tok_window >= 2 else frames_BHWC[:, None]
    self._prev = frames_BHWC
    return self._run(clip, Action.labelled_from(np.asarray(actions_BA, np.int32)), rng)


def load_policy(agent_workdir: str, *, action_spec=None, num_latents=None, latent_dim=None):
  """The play page's hook (dreamer4/play/session.py): policy_fn(z_TNL, rng) -> int32 [Ad].

  It reads the latents of the frames so far (already encoded), runs the agent over the
  last `window` of them at the context level with unlabelled actions (the page does not
  pass the actions; our simplification) and task 0, and samples from the acting head.
  A phase-3 run next to the agent workdir (`../imagine`) is preferred when it exists.
  """
  del action_spec, num_latents, latent_dim
  imagine_dir = os.path.join(os.path.dirname(os.path.abspath(agent_workdir)), "imagine")
  policy_dir = imagine_dir if (epath.Path(imagine_dir) / "checkpoints").exists() else None
  agent = WorldModelAgent(agent_workdir, policy_dir)
  window = agent._window

  @jax.jit
  def act(params, z_1TNL, key):
    model = agent._agent_def.merge(params)
    B, T = z_1TNL.shape[:2]
    batch = {
      "latents": z_1TNL,
      "actions_discrete": jnp.zeros((B, T, agent.action_spec.discrete_columns), jnp.int32),
      "action_labelled": jnp.zeros((B, T), bool),
      "tasks": jnp.zeros((B, T), jnp.int32),
    }
    n_key, a_key = jax.random.split(key)
    h = context_pass(model.dynamics, batch, jax.random.normal(n_key, z_1TNL.shape), agent._context_noise)[:, -1]
    return heads_lib.sample(model.policy.spec, model.policy.params(h, 0), a_key).discrete[0]

  def policy_fn(z_TNL, rng):
    z = jnp.asarray(np.asarray(z_TNL, np.float32)[-window:])[None]
    key = rng if isinstance(rng, jax.Array) else jax.random.key(int(np.random.default_rng(rng).integers(2**31 - 1)))
    return np.asarray(act(agent._params, z, key), np.int32)

  return policy_fn
