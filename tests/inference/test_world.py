"""Tests for the KV-cached World: cached generation equals uncached recomputation."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from data_pipelines.envs.base import Action, ActionComponent, ActionSpec
from dreamer4.inference import kv_cache
from dreamer4.inference.sampler import generate
from dreamer4.inference.world import World
from dreamer4.models import heads
from dreamer4.models.dynamics import Dynamics, make_sampling_fn

SPEC = ActionSpec(
  (
    ActionComponent("move", "discrete", 5),
    ActionComponent("keys", "binary", 2),
    ActionComponent("stick", "continuous", 2),
  )
)
N, L = 4, 4
B, C = 2, 2
K_MAX = 8
W = 3  # window / model.context


def _make(depth, time_every, context=W):
  cfg = ml_collections.ConfigDict(
    dict(
      group=2,
      num_registers=1,
      k_max=K_MAX,
      width=32,
      depth=depth,
      num_heads=2,
      num_kv_heads=1,
      head_dim=16,
      mlp_dim=64,
      time_every=time_every,
      softcap=50.0,
      context=context,
      dtype="float32",
      remat=False,
      spatial_pos=False,
      scan_layers=False,
      remat_policy="nothing",
      attention="dense",
    )
  )
  with nnx.use_eager_sharding(False):
    return Dynamics.from_config(cfg, N, L, SPEC, nnx.Rngs(3))


@pytest.fixture(scope="module")
def one_time_layer():
  return _make(depth=2, time_every=2)


@pytest.fixture(scope="module")
def two_time_layers():
  return _make(depth=4, time_every=2)


def _actions(T, seed=5):
  keys = jax.random.split(jax.random.key(seed), 3)
  return Action(
    discrete=jnp.concatenate(
      [jax.random.randint(keys[0], (B, T, 1), 0, 5), jax.random.randint(keys[1], (B, T, 2), 0, 2)], axis=-1
    ),
    continuous=jax.random.normal(keys[2], (B, T, 2)),
    labelled=jnp.ones((B, T), bool).at[:, 0].set(False),
  )


def _context(seed=0):
  return jax.random.normal(jax.random.key(seed), (B, C, N, L))


def _frame(actions, t):
  return jax.tree.map(lambda a: a[:, t], actions)


def _world_rollout(model, horizon, k, rng, **kw):
  """World rollout with generate()'s RNG convention; returns [B, H, N, L]."""
  actions = _actions(C + horizon)
  world = World(model, k=k, context_noise=0.1, window=W, **kw)
  prime_rng, gen_rng = jax.random.split(rng)
  state = world.reset(_context(), jax.tree.map(lambda a: a[:, :C], actions), prime_rng)
  frames = []
  for h in range(horizon):
    out, state = world.step(state, _frame(actions, C + h), jax.random.fold_in(gen_rng, h))
    frames.append(out["z_BNL"])
  return jnp.stack(frames, axis=1), world


def _generate(model, horizon, k, rng):
  run = jax.jit(
    functools.partial(generate, make_sampling_fn(model), horizon=horizon, k=k, k_max=K_MAX, context_noise=0.1, window=W)
  )
  return run(_context(), _actions(C + horizon), rng)["z_BHNL"]


def _full_history_reference(model, horizon, k, rng):
  """Recomputes ALL frames every step (absolute positions, the model's own sliding
  time mask), with generate()'s noise: what the cached path must equal exactly."""
  T = C + horizon
  actions = _actions(T)
  apply_fn = jax.jit(make_sampling_fn(model))
  ctx_idx, d_min_idx, signal = kv_cache.context_keys(model, 0.1)
  grid, log2_k = K_MAX // k, k.bit_length() - 1
  prime_rng, gen_rng = jax.random.split(rng)
  noise = jax.random.normal(prime_rng, (B, C, N, L))
  hist = jnp.zeros((B, T, N, L)).at[:, :C].set((1 - signal) * noise + signal * _context())
  frames = []
  for h in range(horizon):
    p = C + h
    init_rng, ctx_rng = jax.random.split(jax.random.fold_in(gen_rng, h))
    z = jax.random.normal(init_rng, (B, N, L))
    is_p = jnp.arange(T) == p
    d_idx = jnp.broadcast_to(jnp.where(is_p, log2_k, d_min_idx), (B, T))
    for j in range(k):
      tau_idx = jnp.broadcast_to(jnp.where(is_p, j * grid, ctx_idx), (B, T))
      z1 = apply_fn(hist.at[:, p].set(z), tau_idx, d_idx, actions)[:, p]
      a = 1.0 / (k - j)
      z = (1 - a) * z + a * z1
    frames.append(z)
    hist = hist.at[:, p].set((1 - signal) * jax.random.normal(ctx_rng, z.shape) + signal * z)
  return jnp.stack(frames, axis=1)


@pytest.mark.parametrize("horizon", [1, 6])  # C + H within the window, and 2x past it
def test_cached_equals_generate_one_time_layer(one_time_layer, horizon):
  # With a single time layer the time-layer inputs are per-frame, so generate()'s
  # window-restarted recomputation and the cache agree at any horizon.
  rng = jax.random.key(11)
  cached, _ = _world_rollout(one_time_layer, horizon, 4, rng)
  ref = _generate(one_time_layer, horizon, 4, rng)
  np.testing.assert_allclose(np.asarray(cached), np.asarray(ref), atol=1e-4, rtol=1e-4)


def test_cached_equals_generate_within_window(two_time_layers):
  rng = jax.random.key(12)
  cached, _ = _world_rollout(two_time_layers, 1, 2, rng)
  ref = _generate(two_time_layers, 1, 2, rng)
  np.testing.assert_allclose(np.asarray(cached), np.asarray(ref), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("horizon", [1, 7])
def test_cached_equals_full_history_recompute(two_time_layers, horizon):
  rng = jax.random.key(13)
  cached, _ = _world_rollout(two_time_layers, horizon, 2, rng)
  ref = _full_history_reference(two_time_layers, horizon, 2, rng)
  np.testing.assert_allclose(np.asarray(cached), np.asarray(ref), atol=1e-4, rtol=1e-4)


def test_step_compiles_once(one_time_layer):
  _, world = _world_rollout(one_time_layer, 10, 2, jax.random.key(0))
  assert world.step_compiles() == 1


def test_primed_and_generated_frames_share_cache_keys(two_time_layers):
  model = two_time_layers
  world = World(model, k=2, context_noise=0.1, window=W)
  actions = _actions(C + 1)
  prime_rng, step_rng = jax.random.key(1), jax.random.key(2)
  state = world.reset(_context(), jax.tree.map(lambda a: a[:, :C], actions), prime_rng)
  out, state = world.step(state, _frame(actions, C), step_rng)
  # Priming the generated frame as if it were context, with the noise the step drew,
  # must give the very cache that generating it gave.
  noise_ctx = jax.random.normal(prime_rng, (B, C, N, L))
  noise_gen = jax.random.normal(jax.random.split(step_rng)[1], (B, N, L))
  primed = kv_cache.prime(
    model,
    kv_cache.init_cache(model, B, W),
    jnp.concatenate([_context(), out["z_BNL"][:, None]], axis=1),
    actions,
    jnp.concatenate([noise_ctx, noise_gen[:, None]], axis=1),
    context_noise=0.1,
  )
  for a, b in zip(jax.tree.leaves(primed), jax.tree.leaves(state.cache)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=1e-5)


def test_commit_keys_are_context_level(two_time_layers, monkeypatch):
  model = two_time_layers
  seen = []
  original = kv_cache.frame_forward

  def spy(model, cache, z, tau_idx, d_idx, *rest, **kwargs):
    seen.append((np.asarray(tau_idx).tolist(), np.asarray(d_idx).tolist()))
    return original(model, cache, z, tau_idx, d_idx, *rest, **kwargs)

  monkeypatch.setattr(kv_cache, "frame_forward", spy)
  actions = _actions(C + 1)
  with jax.disable_jit():
    cache = kv_cache.prime(
      model,
      kv_cache.init_cache(model, B, W),
      _context(),
      jax.tree.map(lambda a: a[:, :C], actions),
      jnp.zeros((B, C, N, L)),
      context_noise=0.1,
    )
    n_prime = len(seen)
    kv_cache.denoise_frame(model, cache, jnp.zeros((B, N, L)), _frame(actions, C), k=2)
    kv_cache.commit_frame(
      model, cache, jnp.zeros((B, N, L)), jnp.zeros((B, N, L)), _frame(actions, C), context_noise=0.1
    )
  ctx = (7, 3)  # round(0.9 * 8), d_min = 1/8
  assert seen[:n_prime] == [ctx] * C
  assert seen[n_prime : n_prime + 2] == [(0, 1), (4, 1)]  # tau = j/2, d = 1/2
  assert seen[-1] == ctx


def test_action_through_jit_scan_and_constructors_match_arrays(one_time_layer):
  # An Action is a pytree of its three arrays: jit and scan return it as an Action.
  acts = _actions(C + 1)
  out = jax.jit(lambda a: jax.tree.map(lambda x: x, a))(acts)
  assert isinstance(out, Action)
  _, ys = jax.lax.scan(lambda c, a: (c, a), 0, jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), acts))
  assert isinstance(ys, Action)
  for a, b in zip(acts, jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), ys)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

  # Each constructor gives the world-model step exactly what the same arrays give.
  world = World(one_time_layer, k=2, context_noise=0.1, window=W)
  ctx = jax.tree.map(lambda a: a[:, :C], acts)

  def step(action):
    state = world.reset(_context(), ctx, jax.random.key(1))
    return np.asarray(world.step(state, action, jax.random.key(2))[0]["z_BNL"])

  disc, cont = acts.discrete[:, C], acts.continuous[:, C]
  sampled = heads.sample(SPEC, jax.random.normal(jax.random.key(3), (B, heads.num_params(SPEC))), jax.random.key(4))
  window = Action.from_window(
    {"actions_discrete": acts.discrete, "actions_continuous": acts.continuous, "action_labelled": acts.labelled}
  )
  cases = {
    "labelled_from": (Action.labelled_from(disc, cont), Action(disc, cont, jnp.ones((B,), bool))),
    "unlabelled": (
      Action.unlabelled(SPEC, (B,)),
      Action(jnp.zeros((B, 3), jnp.int32), jnp.zeros((B, 2)), jnp.zeros((B,), bool)),
    ),
    "from_window": (jax.tree.map(lambda a: a[:, C], window), _frame(acts, C)),
    "sample": (sampled, Action(sampled.discrete, sampled.continuous, jnp.ones((B,), bool))),
  }
  for name, (built, arrays) in cases.items():
    assert [x.shape for x in built] == [x.shape for x in arrays], name
    np.testing.assert_array_equal(step(built), step(arrays), err_msg=name)
  # A zero-width part (no such columns) is an array too, never None.
  only_disc = Action.labelled_from(np.zeros((B, 1), np.int64))
  assert only_disc.continuous.shape == (B, 0) and only_disc.discrete.dtype == np.int32
