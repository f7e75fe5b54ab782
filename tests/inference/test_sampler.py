"""Tests for the autoregressive shortcut sampler."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from data_pipelines.envs.base import Action, ActionComponent, ActionSpec
from dreamer4.inference.sampler import context_tau_index, generate
from dreamer4.models.dynamics import Dynamics, make_sampling_fn

B, C, N, L = 2, 2, 3, 2
K_MAX = 8


def _recorder(predict):
  """Wraps predict(z, tau_idx, d_idx, actions) and records every concrete call."""
  calls = []

  def apply_fn(z, tau_idx, d_idx, actions):
    out = predict(z, tau_idx, d_idx, actions)
    calls.append(
      {
        "z": np.asarray(z),
        "tau_idx": np.asarray(tau_idx),
        "d_idx": np.asarray(d_idx),
        "frame": np.asarray(actions["frame"]),
        "out": np.asarray(out),
      }
    )
    return out

  return apply_fn, calls


def _actions(horizon):
  # "frame" carries each frame's absolute index, to check the action windowing.
  return {"frame": jnp.broadcast_to(jnp.arange(C + horizon), (B, C + horizon))}


def _context(seed=0):
  return jax.random.normal(jax.random.key(seed), (B, C, N, L))


def _run_eager(predict, horizon, **kw):
  apply_fn, calls = _recorder(predict)
  with jax.disable_jit():  # fori_loops run in Python: the recorder sees concrete arrays
    out = generate(apply_fn, _context(), _actions(horizon), jax.random.key(1), horizon=horizon, k_max=K_MAX, **kw)
  return out, calls


def test_context_tau_index():
  assert context_tau_index(0.1, 64) == 58  # signal 0.906, the grid value nearest 0.9
  assert context_tau_index(0.1, 8) == 7
  assert context_tau_index(0.0, 64) == 64  # clean history
  with pytest.raises(ValueError):
    context_tau_index(1.5, 64)


def test_fixed_target_reached_exactly_on_the_grid():
  target = jax.random.normal(jax.random.key(7), (B, N, L))
  k, horizon = 4, 3
  out, calls = _run_eager(lambda z, *_: jnp.broadcast_to(target[:, None], z.shape), horizon, k=k, window=3)
  # The flow step lands exactly on a constant prediction at the last step.
  for h in range(horizon):
    np.testing.assert_array_equal(np.asarray(out["z_BHNL"][:, h]), np.asarray(target))
  assert len(calls) == horizon * k
  for h in range(horizon):
    p = C + h
    frame_calls = calls[h * k : (h + 1) * k]
    here = int(np.argmax(frame_calls[0]["frame"][0] == p))
    # The grid walked is tau = j / k (indices j * k_max / k) with d = 1/k.
    np.testing.assert_array_equal([c["tau_idx"][0, here] for c in frame_calls], [0, 2, 4, 6])
    assert all(np.all(c["d_idx"][:, here] == 2) for c in frame_calls)  # d = 1/4
    # Stepping (not overwriting): the current frame at step j sits on the straight
    # line (1 - j/k) z0 + (j/k) target from the same starting noise z0.
    z0 = frame_calls[0]["z"][:, here]
    for j, c in enumerate(frame_calls):
      expected = (1 - j / k) * z0 + (j / k) * np.asarray(target)
      np.testing.assert_allclose(c["z"][:, here], expected, rtol=1e-5, atol=1e-6)


def test_history_level_is_one_convention_for_primed_and_generated_frames():
  horizon, k = 4, 2
  noise = 0.25
  out, calls = _run_eager(lambda z, *_: 0.5 * z + 1.0, horizon, k=k, window=4, context_noise=noise)
  ctx_idx = context_tau_index(noise, K_MAX)  # 6 -> signal 0.75
  s = ctx_idx / K_MAX
  hist = np.asarray(out["history_BTNL"])
  seen_primed = seen_generated = False
  for i, c in enumerate(calls):
    p = C + i // k
    frames = c["frame"][0]
    here = int(np.argmax(frames == p))
    past = frames[:here]
    # Every history frame, primed or generated, has the same level and d = d_min.
    np.testing.assert_array_equal(c["tau_idx"][:, :here], ctx_idx)
    np.testing.assert_array_equal(c["d_idx"][:, :here], 3)
    # And it is the stored corrupted frame, identical at every later step (its
    # noise was drawn once).
    np.testing.assert_array_equal(c["z"][:, :here], hist[:, past])
    seen_primed |= bool((past < C).any())
    seen_generated |= bool((past >= C).any())
  assert seen_primed and seen_generated
  # The window slid: the last frame's window no longer starts at frame 0.
  assert calls[-1]["frame"][0, 0] == C + horizon - 4
  # Corruption uses the quantised level actually embedded: hist = s z + (1 - s) eps.
  eps_gen = (hist[:, C:] - s * np.asarray(out["z_BHNL"])) / (1 - s)
  eps_ctx = (hist[:, :C] - s * np.asarray(_context())) / (1 - s)
  for eps in (eps_gen, eps_ctx):
    assert 0.5 < eps.std() < 1.6  # unit-variance noise, not a different level


def test_clean_history_when_context_noise_is_zero():
  out, calls = _run_eager(lambda z, *_: z * 0.0 + 2.0, 2, k=1, window=8, context_noise=0.0)
  hist = np.asarray(out["history_BTNL"])
  np.testing.assert_array_equal(hist[:, :C], np.asarray(_context()))
  np.testing.assert_array_equal(hist[:, C:], 2.0)
  assert np.all(calls[-1]["tau_idx"][:, : C + 1] == K_MAX)  # tau = 1 index


def test_jit_matches_eager():
  predict = lambda z, tau_idx, d_idx, actions: jnp.tanh(z + 0.1 * tau_idx[..., None, None])
  eager, _ = _run_eager(predict, 3, k=2, window=3)

  @functools.partial(jax.jit, static_argnames=("horizon",))
  def run(context, actions, rng, horizon):
    return generate(predict, context, actions, rng, horizon=horizon, k=2, k_max=K_MAX, window=3)

  jitted = run(_context(), _actions(3), jax.random.key(1), 3)
  for key in ("z_BHNL", "history_BTNL"):
    np.testing.assert_allclose(np.asarray(jitted[key]), np.asarray(eager[key]), rtol=1e-5, atol=1e-6)


# Same sizes as the objective tests, so a full test session reuses compiled inits.
SPEC = ActionSpec((ActionComponent("move", "discrete", 4), ActionComponent("keys", "binary", 2)))
NM, LM = 4, 4  # model latents


@pytest.fixture(scope="module")
def model():
  cfg = ml_collections.ConfigDict(
    dict(
      group=2,
      num_registers=1,
      k_max=K_MAX,
      width=32,
      depth=2,
      num_heads=2,
      num_kv_heads=1,
      head_dim=16,
      mlp_dim=64,
      time_every=2,
      softcap=50.0,
      context=4,
      dtype="float32",
      remat=True,  # sampling must cope with a model trained with remat
      spatial_pos=False,
      scan_layers=False,
      remat_policy="nothing",
      attention="dense",
    )
  )
  with nnx.use_eager_sharding(False):
    return Dynamics.from_config(cfg, NM, LM, SPEC, nnx.Rngs(0))


def test_one_step_equals_the_models_clean_prediction(model):
  horizon = 2
  T = C + horizon
  actions = Action.labelled_from(
    jnp.concatenate(
      [jax.random.randint(jax.random.key(2), (B, T, 1), 0, 4), jax.random.randint(jax.random.key(4), (B, T, 2), 0, 2)],
      axis=-1,
    )
  )
  context = jax.random.normal(jax.random.key(0), (B, C, NM, LM))

  @nnx.jit
  def run(model, context, actions, rng):
    return generate(make_sampling_fn(model), context, actions, rng, horizon=horizon, k=1, k_max=K_MAX, window=4)

  @nnx.jit
  def predict(model, z, tau_idx, d_idx, actions):
    return make_sampling_fn(model)(z, tau_idx, d_idx, actions)

  out = run(model, context, actions, jax.random.key(3))
  z_gen = np.asarray(out["z_BHNL"])
  hist = np.asarray(out["history_BTNL"])
  assert z_gen.shape == (B, horizon, NM, LM) and np.all(np.isfinite(z_gen))
  # Rebuild the last frame's single call: the history window plus the same start
  # noise (generate draws frame h's start noise from fold_in(gen_rng, h)).
  _, gen_rng = jax.random.split(jax.random.key(3))
  init_rng, _ = jax.random.split(jax.random.fold_in(gen_rng, horizon - 1))
  z0 = jax.random.normal(init_rng, (B, NM, LM))
  z_in = jnp.asarray(hist).at[:, T - 1].set(z0)
  ctx_idx = context_tau_index(0.1, K_MAX)
  tau_idx = jnp.full((B, T), ctx_idx, jnp.int32).at[:, T - 1].set(0)  # tau = 0, pure noise
  d_idx = jnp.full((B, T), 3, jnp.int32).at[:, T - 1].set(0)  # d_min history, d = 1 now
  expected = np.asarray(predict(model, z_in, tau_idx, d_idx, actions))[:, T - 1]
  np.testing.assert_allclose(z_gen[:, -1], expected, rtol=1e-5, atol=1e-5)
  # The history holds the generated frames at the context level, not clean.
  assert not np.allclose(hist[:, C:], z_gen)
  assert model.transformer.remat  # the sampler's remat-free view left the model alone
