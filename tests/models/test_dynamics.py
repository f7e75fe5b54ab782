"""Tests for the interactive dynamics model."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from data_pipelines.envs.base import Action, ActionComponent, ActionSpec
from dreamer4.errors import ConfigError
from dreamer4.models import transformer as tr
from dreamer4.models.dynamics import Dynamics, make_sampling_fn, make_training_fn

# One component of each kind: 1 discrete column + 3 binary columns, 2 continuous.
SPEC = ActionSpec(
  (
    ActionComponent("move", "discrete", 5),
    ActionComponent("keys", "binary", 3),
    ActionComponent("stick", "continuous", 2),
  )
)
N, L = 4, 4  # tokenizer latents per frame
B, T = 2, 4
K_MAX = 8


def _cfg(**overrides):
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
      context=0,
      dtype="float32",
      remat=False,
      spatial_pos=False,
      scan_layers=False,
      remat_policy="nothing",
      attention="dense",
    )
  )
  cfg.update(overrides)
  return cfg


def _make(spec=SPEC, num_agent_tokens=0, num_tasks=0, **overrides):
  with nnx.use_eager_sharding(False):
    return Dynamics.from_config(
      _cfg(**overrides), N, L, spec, nnx.Rngs(0), num_agent_tokens=num_agent_tokens, num_tasks=num_tasks
    )


@pytest.fixture(scope="module", params=["default", "spatial_pos"])
def model(request):
  # Every model test also runs with the opt-in per-token spatial position embedding.
  return _make(spatial_pos=request.param == "spatial_pos")


def _inputs(seed=0):
  keys = jax.random.split(jax.random.key(seed), 6)
  return dict(
    z=jax.random.normal(keys[0], (B, T, N, L)),
    tau_idx=jax.random.randint(keys[1], (B, T), 0, K_MAX + 1),
    d_idx=jax.random.randint(keys[2], (B, T), 0, 4),
    disc=jnp.concatenate(
      [
        jax.random.randint(keys[3], (B, T, 1), 0, 5),
        jax.random.randint(keys[4], (B, T, 3), 0, 2),
      ],
      axis=-1,
    ),
    labelled=jnp.ones((B, T), bool).at[:, 0].set(False),
    cont=jax.random.normal(keys[5], (B, T, 2)),
  )


def _act(x) -> Action:
  return Action(x["disc"], x["cont"], x["labelled"])


@nnx.jit
def _call(model, x, independent_B=None, tasks=None):
  return model(x["z"], x["tau_idx"], x["d_idx"], _act(x), independent_B=independent_B, tasks_BT=tasks)


def _z1(model, x, **kw):
  return np.asarray(_call(model, x, **kw)["z1_hat_BTNL"])


def test_config_validation():
  with pytest.raises(ConfigError, match="config.model.group"):
    _make(group=3)
  with pytest.raises(ValueError, match="config.model.k_max"):
    _make(k_max=6)
  with pytest.raises(ValueError, match="config.model.width"):
    _make(width=33, head_dim=16)


def test_layout_and_shapes(model):
  assert model.layout.segments == (("spatial", 2), ("registers", 1), ("tau_d", 1), ("action", 1))
  assert model.tau_embed.shape == (K_MAX + 1, 16)  # k_max + 1 levels incl. clean
  assert model.d_embed.shape == (4, 16)  # d = 1, 1/2, 1/4, 1/8
  out = _call(model, _inputs(), tasks=None)
  assert set(out) == {"z1_hat_BTNL"}
  assert out["z1_hat_BTNL"].shape == (B, T, N, L) and out["z1_hat_BTNL"].dtype == jnp.float32
  assert np.all(np.isfinite(np.asarray(out["z1_hat_BTNL"])))


def test_grouping_roundtrip(model):
  z = jnp.arange(B * T * N * L, dtype=jnp.float32).reshape(B, T, N, L)
  g = model.group_latents(z)
  assert g.shape == (B, T, 2, 8)
  # Spatial token 1 holds latent tokens 2 and 3, concatenated.
  np.testing.assert_array_equal(g[0, 0, 1], jnp.concatenate([z[0, 0, 2], z[0, 0, 3]]))
  np.testing.assert_array_equal(model.ungroup_latents(g), z)


def test_block_causal(model):
  x = _inputs()
  base = _z1(model, x)
  for t in range(1, T):
    x2 = dict(x, z=x["z"].at[:, t:].set(-x["z"][:, t:]))
    out = _z1(model, x2)
    np.testing.assert_array_equal(out[:, :t], base[:, :t])
    assert not np.allclose(out[:, t], base[:, t])
  # Conditioning inputs of later frames are invisible to earlier ones too.
  x3 = dict(x, tau_idx=x["tau_idx"].at[:, 2].set((x["tau_idx"][:, 2] + 3) % (K_MAX + 1)))
  out = _z1(model, x3)
  np.testing.assert_array_equal(out[:, :2], base[:, :2])
  assert not np.allclose(out[:, 2], base[:, 2])


def test_action_change_affects_only_later_frames(model):
  x = _inputs()
  base = _z1(model, x)
  t = 2
  for name, new in (
    ("disc", x["disc"].at[:, t, 0].set((x["disc"][:, t, 0] + 1) % 5)),
    ("disc", x["disc"].at[:, t, 2].set(1 - x["disc"][:, t, 2])),  # one binary bit
    ("cont", x["cont"].at[:, t].add(1.0)),
  ):
    out = _z1(model, dict(x, **{name: new}))
    np.testing.assert_array_equal(out[:, :t], base[:, :t])
    assert not np.allclose(out[:, t], base[:, t]), name
    assert not np.allclose(out[:, t + 1], base[:, t + 1]), name  # carried by the time layer


def test_unlabelled_frames_use_only_base_embedding(model):
  x = _inputs()
  tok = model.embed_actions(Action(x["disc"], x["cont"], jnp.zeros((B, T), bool)))
  assert tok.shape == (B, T, 1, 32)
  base = np.broadcast_to(np.asarray(model.action_base[...]), (B, T, 32))
  np.testing.assert_array_equal(np.asarray(tok[:, :, 0]), base)
  # Wildly different (even out-of-range / NaN) actions: still exactly the base.
  nan_BTA = jnp.full((B, T, 2), jnp.nan)
  tok2 = model.embed_actions(Action(x["disc"] * 7 + 3, nan_BTA, jnp.zeros((B, T), bool)))
  np.testing.assert_array_equal(np.asarray(tok2[:, :, 0]), base)
  # Labelled frames do carry the action.
  tok3 = model.embed_actions(Action.labelled_from(x["disc"], x["cont"]))
  assert not np.allclose(np.asarray(tok3[:, :, 0]), base)
  # And end to end: frame 0 is unlabelled, so its action value is irrelevant.
  out = _z1(model, dict(x, disc=x["disc"].at[:, 0].set(1), cont=x["cont"].at[:, 0].set(5.0)))
  np.testing.assert_array_equal(out, _z1(model, x))


def test_discrete_and_binary_table_rows(model):
  # Column 0: 5 classes (rows 0..4); columns 1..3: one bit each (2 rows apiece).
  assert model._action_offsets == (0, 5, 7, 9)
  assert model.action_table.shape == (11, 32)
  table = np.asarray(model.action_table[...])
  disc = jnp.array([[[3, 1, 0, 1]]], jnp.int32)
  tok = model.embed_actions(Action.labelled_from(disc, jnp.zeros((1, 1, 2))))[0, 0, 0]
  expected = (
    np.asarray(model.action_base[...])
    + table[3]
    + table[6]
    + table[7]
    + table[10]
    + np.asarray(model.action_cont_bias[...])
  )
  np.testing.assert_allclose(np.asarray(tok), expected, rtol=1e-6, atol=1e-7)


def test_independent_rows_do_not_read_other_frames(model):
  x = _inputs()
  ind = jnp.array([True, False])
  base = _z1(model, x, independent_B=ind)
  x2 = dict(x, z=x["z"].at[:, 1].set(-x["z"][:, 1]))
  out = _z1(model, x2, independent_B=ind)
  np.testing.assert_array_equal(out[0, [0, 2, 3]], base[0, [0, 2, 3]])  # row 0: only frame 1 moves
  assert not np.allclose(out[0, 1], base[0, 1])
  assert not np.allclose(out[1, 2:], base[1, 2:])  # row 1: causal video, later frames move
  np.testing.assert_array_equal(out[1, :1], base[1, :1])
  # The independent row equals each frame run alone as a one-frame video.
  for t in range(T):
    single = {k: v[:1, t : t + 1] for k, v in x.items()}
    np.testing.assert_allclose(_z1(model, single)[0, 0], base[0, t], rtol=1e-5, atol=1e-5)


def test_context_window():
  model = _make(context=2)
  x = _inputs()
  base = _z1(model, x)
  out = _z1(model, dict(x, z=x["z"].at[:, 0].set(-x["z"][:, 0])))
  assert not np.allclose(out[:, 1], base[:, 1])
  # One time layer and a 2-frame window: frames >= 2 cannot reach frame 0.
  np.testing.assert_array_equal(out[:, 2:], base[:, 2:])


def test_agent_tokens_are_read_by_nobody():
  model = _make(num_agent_tokens=2, num_tasks=3)
  assert model.layout.names[-1] == "agent"
  x = _inputs()
  out_a = _call(model, x, tasks=jnp.zeros((B, T), jnp.int32))
  out_b = _call(model, x, tasks=jnp.full((B, T), 2, jnp.int32))
  assert out_a["agent_BTKD"].shape == (B, T, 2, 32)
  np.testing.assert_array_equal(np.asarray(out_a["z1_hat_BTNL"]), np.asarray(out_b["z1_hat_BTNL"]))
  assert not np.allclose(np.asarray(out_a["agent_BTKD"]), np.asarray(out_b["agent_BTKD"]))
  # Dropping the task embedding altogether leaves the predictions unchanged too.
  out_c = _call(model, x, tasks=None)
  np.testing.assert_array_equal(np.asarray(out_a["z1_hat_BTNL"]), np.asarray(out_c["z1_hat_BTNL"]))


def test_apply_fn_helpers_slice_rows(model):
  x = _inputs()

  @nnx.jit
  def train_fn(model, x, rows):
    fn = make_training_fn(model, _act(x))
    return fn(rows["z"], rows["tau_idx"], rows["d_idx"], None)

  @nnx.jit
  def sample_fn(model, x):
    return make_sampling_fn(model)(x["z"], x["tau_idx"], x["d_idx"], _act(x))

  full = _z1(model, x)
  np.testing.assert_allclose(np.asarray(train_fn(model, x, x)), full, rtol=1e-5, atol=1e-5)
  # The bootstrap passes call it on the first rows only; the actions follow.
  first = train_fn(model, x, {k: v[:1] for k, v in x.items()})
  np.testing.assert_allclose(np.asarray(first), full[:1], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(sample_fn(model, x)), full, rtol=1e-5, atol=1e-5)


def test_discrete_only_spec():
  spec = ActionSpec((ActionComponent("move", "discrete", 3),))
  model = _make(spec=spec)
  x = _inputs()
  act = Action.from_window({"actions_discrete": x["disc"][..., :1] % 3, "action_labelled": x["labelled"]})
  assert act.continuous.shape == (B, T, 0)  # a part the spec has no columns for is zero-width
  out = model(x["z"], x["tau_idx"], x["d_idx"], act)
  assert out["z1_hat_BTNL"].shape == (B, T, N, L)
  with pytest.raises(ValueError, match="columns"):
    model(x["z"], x["tau_idx"], x["d_idx"], act._replace(discrete=x["disc"]))


def test_partition_names(model):
  params = nnx.to_flat_state(nnx.state(model, nnx.Param))
  for path, var in params:
    names = var.get_metadata()["out_sharding"]
    assert len(names) == var[...].ndim, path
    assert all(n is None or n in tr.LOGICAL_AXES for n in names), path
