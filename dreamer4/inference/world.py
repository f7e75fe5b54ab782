"""Real-time world simulation: a KV-cached dynamics model behind reset/step.

`World` wraps a Dynamics model (and optionally a frozen tokenizer to decode pixels)
for interactive rollouts of B environments at once:

  world = World(model, tokenizer, k=4, context_noise=0.1)
  state = world.reset(context_z_BCNL, context_actions, rng)
  for t in ...:
    out, state = world.step(state, action, rng_t)   # out["z_BNL"], out["frame_BHWC"]

Each step generates one frame with `k` shortcut steps over the KV cache
(`inference.kv_cache`); both functions are jitted once with static shapes, so a
step never recompiles (`step_compiles()` counts its executables, dreamer4/aot.py).

RNG convention (matches `sampler.generate`, so the two can be compared noise for
noise): `reset` draws all context corruption noise as normal(rng, [B, C, N, L]);
`step` splits its rng into (initial-noise key, history-noise key).

Actions: one frame's action is an `Action` [B] (data_pipelines/envs/base.py; discrete
int32 [B, Ad], continuous float [B, Ac], labelled bool [B], per the model's ActionSpec),
the action that LEADS TO the generated frame. A bare int array [B, Ad] is read as
labelled discrete actions (`Action.labelled_from`). Context actions are an Action with a
C axis: [B, C, ...].

Decoding: the tokenizer decodes each new frame on its own (T = 1). A tokenizer
whose decoder has time layers would read earlier frames too; that history is not
kept here (a tokenizer KV cache would be the same machinery).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from data_pipelines.envs.base import Action
from dreamer4.aot import AotJit
from dreamer4.inference import kv_cache
from dreamer4.models.dynamics import Dynamics, log2_exact


class WorldState(NamedTuple):
  """Per-rollout state: the KV cache of the last W - 1 frames (a pytree)."""

  cache: kv_cache.KVCache


def as_action(action: Any) -> Action:
  """An Action as is; a bare int array [..., Ad] as labelled discrete actions (module docstring)."""
  if isinstance(action, Action):
    return action
  if isinstance(action, dict):
    raise TypeError("actions are data_pipelines.envs.base.Action values, not dicts")
  return Action.labelled_from(jnp.asarray(action, jnp.int32))


def no_action(model: Dynamics, batch: int, frames: int | None = None) -> Action:
  """Unlabelled actions ([B] or [B, frames]): only the base action embedding."""
  lead = (batch,) if frames is None else (batch, frames)
  return Action.unlabelled(model.action_spec, lead)


class World:
  """Batched, KV-cached, jitted frame-by-frame generation.

  Args:
    model: Dynamics model (its parameters are captured at construction).
    tokenizer: Optional frozen Tokenizer; when given, `step` also returns pixels.
    k: Shortcut steps per frame (power of two <= model.k_max).
    context_noise: Noise share of history frames ([P §3.2]: tau_ctx = 0.1).
    window: Frames each new frame reads, itself included (default model.context).
  """

  def __init__(
    self, model: Dynamics, tokenizer=None, *, k: int = 4, context_noise: float = 0.1, window: int | None = None
  ):
    log2_exact(k, "steps per frame k")
    if k > model.k_max:
      raise ValueError(f"steps per frame k={k} exceeds k_max={model.k_max}")
    self.k = int(k)
    self.context_noise = float(context_noise)
    self.window = kv_cache.cache_window(model, window)
    self.num_latents, self.latent_dim = model.num_latents, model.latent_dim
    self._model_def, self._model_state = nnx.split(model)
    self._has_tokenizer = tokenizer is not None
    if tokenizer is not None:
      self._tok_def, self._tok_state = nnx.split(tokenizer)
    else:
      self._tok_def, self._tok_state = None, None
    self._reset_jit = jax.jit(self._reset_impl)
    # The old state is dead after a step: donating it lets XLA update the cache in place.
    self._step_jit = AotJit(self._step_impl, donate_argnums=(2,))

  # Pure functions of (parameters, inputs); jitted in __init__.

  def _reset_impl(self, model_state, context_z_BCNL, context_actions, rng):
    model = nnx.merge(self._model_def, model_state)
    B = context_z_BCNL.shape[0]
    cache = kv_cache.init_cache(model, B, self.window)
    noise_BCNL = jax.random.normal(rng, context_z_BCNL.shape, jnp.float32)
    cache = kv_cache.prime(
      model, cache, context_z_BCNL.astype(jnp.float32), context_actions, noise_BCNL, context_noise=self.context_noise
    )
    return WorldState(cache)

  def _step_impl(self, model_state, tok_state, state, action, rng):
    model = nnx.merge(self._model_def, model_state)
    B = action.labelled.shape[0]
    init_rng, ctx_rng = jax.random.split(rng)
    z0_BNL = jax.random.normal(init_rng, (B, self.num_latents, self.latent_dim), jnp.float32)
    # History noise drawn once, here, as for primed frames (kv_cache.commit_frame).
    noise_BNL = jax.random.normal(ctx_rng, z0_BNL.shape, jnp.float32)
    # The k denoising passes and the commit: one loop that reads the cache in place.
    z_BNL, cache = kv_cache.generate_frame(
      model, state.cache, z0_BNL, noise_BNL, action, k=self.k, context_noise=self.context_noise
    )
    out = {"z_BNL": z_BNL}
    if self._has_tokenizer:
      tokenizer = nnx.merge(self._tok_def, tok_state)
      out["frame_BHWC"] = tokenizer.decode(z_BNL[:, None])[:, 0]
    return out, WorldState(cache)

  # Public API.

  def reset(self, context_latents_BCNL, context_actions, rng) -> WorldState:
    """Primes the cache with C clean context frames, corrupted to the context level.

    Args:
      context_latents_BCNL: Clean tokenizer latents [B, C, N, L] (C may be 0).
      context_actions: Action [B, C] or int [B, C, Ad] (labelled discrete); None = unlabelled.
      rng: PRNG key for the context corruption noise.
    """
    z = jnp.asarray(context_latents_BCNL, jnp.float32)
    B, C = z.shape[:2]
    if context_actions is None:
      context_actions = no_action(nnx.merge(self._model_def, self._model_state), B, C)
    else:
      context_actions = as_action(context_actions)
    return self._reset_jit(self._model_state, z, context_actions, rng)

  def step(self, state: WorldState, action, rng) -> tuple[dict, WorldState]:
    """Generates one frame for every row.

    Args:
      state: From `reset` or a previous `step`.
      action: This frame's Action [B] (or int [B, Ad], see module docstring).
      rng: PRNG key for this frame.

    Returns:
      (out, state): out["z_BNL"] the clean generated latents (float32) and, with a
      tokenizer, out["frame_BHWC"] the decoded frame in [0, 1]. The input `state`
      is donated (its cache buffers are reused): do not use it again.
    """
    return self._step_jit(self._model_state, self._tok_state, state, as_action(action), rng)

  def step_compiles(self) -> int:
    """How many times `step` has been compiled (1 after any number of steps)."""
    return self._step_jit.compiles
