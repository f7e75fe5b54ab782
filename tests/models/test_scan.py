"""Scanned transformer layers: the same function as the unscanned stack, a depth-free program,
remat policies that change nothing numerically, and conversion of old checkpoints."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from data_pipelines.envs.base import Action, ActionComponent, ActionSpec
from dreamer4 import sharding as shd
from dreamer4.errors import ConfigError
from dreamer4.inference import kv_cache
from dreamer4.models import scan_layout
from dreamer4.models import transformer as tr
from dreamer4.models.dynamics import Dynamics
from dreamer4.models.tokenizer import Tokenizer

ATOL = 1e-5
SPEC = ActionSpec((ActionComponent("move", "discrete", 3),))
N, L = 4, 4  # dynamics latents per frame


def _params(model):
  return nnx.state(model, nnx.Param).to_pure_dict()


def _pair(build):
  """(unscanned, scanned) models with the same weights: the scanned one takes the other's params."""
  with nnx.use_eager_sharding(False):
    ref, scanned = build(False), build(True)
  nnx.update(scanned, scan_layout.convert_layout(_params(ref), _params(scanned)))
  return ref, scanned


def _assert_trees_close(a, b, atol=ATOL):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol, rtol=1e-5)


def _tokenizer(scan, **kw):
  cfg = ml_collections.ConfigDict(
    dict(
      patch_size=4,
      num_latents=4,
      latent_dim=8,
      width=32,
      enc_depth=4,
      dec_depth=2,
      num_heads=4,
      num_kv_heads=2,
      head_dim=8,
      mlp_dim=64,
      time_every=2,
      softcap=50.0,
      dtype="float32",
      remat=False,
      scan_layers=scan,
      remat_policy="nothing",
      context=0,
      readout_bias_init=0.0,
      readout_init_scale=1.0,
      block_skip=True,
      output="clip",
      attention="dense",
    )
  )
  cfg.update(kw)
  return Tokenizer.from_config(cfg, (16, 16, 3), nnx.Rngs(0))


def _dynamics(scan, depth=4, time_every=2, **kw):
  cfg = ml_collections.ConfigDict(
    dict(
      group=2,
      num_registers=1,
      k_max=8,
      width=32,
      depth=depth,
      num_heads=2,
      num_kv_heads=1,
      head_dim=16,
      mlp_dim=64,
      time_every=time_every,
      softcap=50.0,
      context=3,
      dtype="float32",
      remat=False,
      spatial_pos=False,
      scan_layers=scan,
      remat_policy="nothing",
      attention="dense",
    )
  )
  cfg.update(kw)
  return Dynamics.from_config(cfg, N, L, SPEC, nnx.Rngs(0), num_agent_tokens=1, num_tasks=2)


@pytest.fixture(scope="module")
def tok_pair():
  return _pair(_tokenizer)


@pytest.fixture(scope="module")
def dyn_pair():
  return _pair(_dynamics)


@pytest.fixture(scope="module")
def dyn_grads(dyn_pair):
  """(loss, grads) of the scanned dynamics model without remat."""
  return _value_and_grads(_dynamics_loss, dyn_pair[1], _dyn_inputs())


def _tokenizer_loss(model, frames):
  out = model(frames)
  return jnp.mean(jnp.square(out["recon_BTHWC"] - frames)) + jnp.mean(jnp.sin(3.0 * out["z_BTNL"]))


def _dyn_inputs(T=4, seed=0):
  k = jax.random.split(jax.random.key(seed), 4)
  return dict(
    z=jax.random.normal(k[0], (2, T, N, L)),
    tau=jax.random.randint(k[1], (2, T), 0, 9),
    d=jax.random.randint(k[2], (2, T), 0, 4),
    act=jax.random.randint(k[3], (2, T, 1), 0, 3),
    lab=jnp.ones((2, T), bool),
  )


def _dynamics_loss(model, x):
  act = Action(x["act"], jnp.zeros(x["lab"].shape + (0,)), x["lab"])
  out = model(x["z"], x["tau"], x["d"], act, tasks_BT=jnp.ones_like(x["tau"]))
  return jnp.mean(jnp.square(out["z1_hat_BTNL"] - 0.5 * x["z"]))


def _value_and_grads(loss_fn, model, *args):
  loss, grads = nnx.jit(nnx.value_and_grad(loss_fn))(model, *args)
  return float(loss), nnx.state(grads, nnx.Param).to_pure_dict()


def test_scanned_equals_unscanned_tokenizer(tok_pair):
  ref, scanned = tok_pair
  assert "blocks" in _params(ref)["encoder"] and "groups" in _params(scanned)["encoder"]
  frames = jax.random.uniform(jax.random.key(1), (2, 3, 16, 16, 3))
  loss_ref, g_ref = _value_and_grads(_tokenizer_loss, ref, frames)
  loss_scan, g_scan = _value_and_grads(_tokenizer_loss, scanned, frames)
  np.testing.assert_allclose(loss_scan, loss_ref, atol=ATOL, rtol=1e-6)
  _assert_trees_close(g_scan, scan_layout.convert_layout(g_ref, g_scan))


def test_scanned_equals_unscanned_dynamics(dyn_pair, dyn_grads):
  loss_ref, g_ref = _value_and_grads(_dynamics_loss, dyn_pair[0], _dyn_inputs())
  loss_scan, g_scan = dyn_grads
  np.testing.assert_allclose(loss_scan, loss_ref, atol=ATOL, rtol=1e-6)
  _assert_trees_close(g_scan, scan_layout.convert_layout(g_ref, g_scan))


def test_scanned_equals_unscanned_transformer_decode():
  kw = dict(width=32, depth=4, num_heads=4, num_kv_heads=2, head_dim=8, mlp_dim=64, time_every=2, softcap=50.0)
  ref, scanned = _pair(lambda scan: tr.Transformer(rngs=nnx.Rngs(0), scan_layers=scan, **kw))
  B, S, M = 2, 5, 3
  keys = jax.random.split(jax.random.key(2), 3)
  x_BSD = jax.random.normal(keys[0], (B, S, 32))
  cache = dict(
    cache_k_LBSMGK=jax.random.normal(keys[1], (2, B, S, M, 2, 8)),
    cache_v_LBSMGK=jax.random.normal(keys[2], (2, B, S, M, 2, 8)),
    cache_pos_M=jnp.array([1, 2, 0]),
    cache_valid_M=jnp.array([True, True, False]),
    query_pos=3,
  )
  for rotated in (False, True):
    kw_call = dict(cache)
    if rotated:
      kw_call["cache_k_LBSMGK"] = ref.rotate_cached_keys(cache["cache_k_LBSMGK"], cache["cache_pos_M"])
    mask = np.ones((S, S), bool)
    decode = nnx.jit(lambda m, x: m.decode(x, space_mask_SS=mask, keys_rotated=rotated, **kw_call))
    _assert_trees_close(decode(scanned, x_BSD), decode(ref, x_BSD))


def test_scanned_equals_unscanned_kv_cached_dynamics(dyn_pair):
  ref, scanned = dyn_pair
  C = 3
  keys = jax.random.split(jax.random.key(4), 4)
  z_BCNL = jax.random.normal(keys[0], (2, C, N, L))
  noise_BCNL = jax.random.normal(keys[1], (2, C, N, L))
  acts = Action.labelled_from(jax.random.randint(keys[2], (2, C, 1), 0, 3))
  tasks_B = jnp.array([0, 1])

  @nnx.jit
  def run(model):
    cache = kv_cache.init_cache(model, batch=2)
    cache, agent_BKD = kv_cache.prime(
      model, cache, z_BCNL, acts, noise_BCNL, context_noise=0.1, tasks_B=tasks_B, with_agent=True
    )
    action = jax.tree.map(lambda a: a[:, 0], acts)
    out = kv_cache.frame_forward(
      model, cache, jax.random.normal(keys[3], (2, N, L)), 4, 1, action, tasks_B=tasks_B, with_agent=True
    )
    return cache, agent_BKD, out

  _assert_trees_close(run(scanned), run(ref))


def _lowered_lines(depth, scan):
  with nnx.use_eager_sharding(False):
    model = _dynamics(scan, depth=depth, remat=True)
  graphdef, params = nnx.split(model, nnx.Param)
  x = _dyn_inputs()

  def loss(params):
    return _dynamics_loss(nnx.merge(graphdef, params), x)

  return len(jax.jit(jax.grad(loss)).lower(params).as_text().splitlines())


def test_program_does_not_grow_with_depth():
  # Forward and backward (with remat) of one scanned body, whatever the depth.
  assert _lowered_lines(16, scan=True) <= _lowered_lines(4, scan=True)
  assert _lowered_lines(16, scan=False) > 2 * _lowered_lines(4, scan=False)  # the measure is sensitive


@pytest.mark.parametrize("policy", tr.REMAT_POLICIES)
def test_remat_policies_give_the_same_loss_and_gradients(dyn_pair, dyn_grads, policy):
  rematted = nnx.merge(*nnx.split(dyn_pair[1]))  # a view sharing the parameters
  rematted.transformer.remat, rematted.transformer.remat_policy = True, policy
  loss, grads = dyn_grads
  loss_r, grads_r = _value_and_grads(_dynamics_loss, rematted, _dyn_inputs())
  np.testing.assert_allclose(loss_r, loss, atol=1e-6, rtol=1e-6)
  _assert_trees_close(grads_r, grads, atol=1e-6)


def test_conversion_round_trip_and_abstract_shardings(tok_pair):
  ref, scanned = tok_pair
  p_ref, p_scan = _params(ref), _params(scanned)
  stacked = scan_layout.convert_layout(p_ref, p_scan)
  assert jax.tree.structure(stacked) == jax.tree.structure(p_scan)
  wq = stacked["encoder"]["groups"]["blocks"][1]["attn"]["wq"]
  assert wq.shape == (2, 32, 4, 8)
  np.testing.assert_array_equal(wq[1], p_ref["encoder"]["blocks"][3]["attn"]["wq"])  # layer 3 = group 1, slot 1
  back = scan_layout.convert_layout(stacked, p_ref)
  assert jax.tree.structure(back) == jax.tree.structure(p_ref)
  for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(p_ref)):
    np.testing.assert_array_equal(a, b)
  # Stacked params carry the leading logical axis "layers", which the rule table leaves unsharded.
  specs = nnx.get_partition_spec(nnx.state(scanned, nnx.Param)).to_pure_dict()
  assert tuple(specs["decoder"]["groups"]["blocks"][0]["attn"]["wq"]) == ("layers", "embed", "heads", "head_dim")
  mesh = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"))
  assert shd.logical_to_mesh_spec(("layers", "embed", "heads", "head_dim"), (2, 32, 4, 8), mesh) == P(
    None, "fsdp", "tensor", None
  )
  # Abstract trees (a restore target) convert with their shardings.
  sharding = NamedSharding(mesh, P(None, "fsdp", "tensor", None))
  abstract = jax.ShapeDtypeStruct((2, 32, 4, 8), jnp.float32, sharding=sharding)
  tree = {"groups": {"blocks": {0: {"w": abstract}, 1: {"w": abstract}}}}
  flat = scan_layout.convert_layout(tree, {"blocks": {i: {"w": None} for i in range(4)}})
  assert [k for k in flat["blocks"]] == [0, 1, 2, 3]
  assert flat["blocks"][2]["w"].shape == (32, 4, 8)
  assert flat["blocks"][2]["w"].sharding.spec == P("fsdp", "tensor", None)


@pytest.mark.parametrize("saved_scanned", [False, True])
def test_checkpoint_of_the_other_layout_restores(tmp_path, dyn_pair, saved_scanned):
  # The restore hook: convert the abstract target into the checkpoint's layout (its
  # metadata), restore that, convert the result back into the target's layout.
  import orbax.checkpoint as ocp

  from dreamer4.training.checkpoint import Checkpointer, restore_params

  ref, scanned = dyn_pair
  saved_model, target_model = (scanned, ref) if saved_scanned else (ref, scanned)
  saved = _params(saved_model)
  ckpt = Checkpointer(str(tmp_path / "ckpt"), async_save=False, data_names=())
  ckpt.save(0, {"params": saved}, force=True)
  ckpt.close()

  mesh = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"))
  specs = nnx.get_partition_spec(nnx.state(target_model, nnx.Param)).to_pure_dict()
  target = jax.tree.map(
    lambda x, spec: jax.ShapeDtypeStruct(
      x.shape, x.dtype, sharding=NamedSharding(mesh, shd.logical_to_mesh_spec(tuple(spec), x.shape, mesh))
    ),
    _params(target_model),
    specs,
    is_leaf=lambda s: isinstance(s, P),
  )
  mngr = ocp.CheckpointManager(
    str(tmp_path / "ckpt"), item_names=("state",), item_handlers={"state": ocp.PyTreeCheckpointHandler()}
  )
  meta = mngr.item_metadata(0)["state"]["params"]
  mngr.close()
  source = scan_layout.convert_layout(target, meta)  # hook, before the shape check
  _, restored = restore_params(str(tmp_path / "ckpt"), source)
  params = scan_layout.convert_layout(restored, target)  # hook, on the result
  assert jax.tree.structure(params) == jax.tree.structure(target)
  for p, t in zip(jax.tree.leaves(params), jax.tree.leaves(target)):
    assert p.shape == t.shape and p.sharding == t.sharding
  _assert_trees_close(params, scan_layout.convert_layout(saved, target), atol=0)


def test_depth_must_be_a_multiple_of_time_every():
  with nnx.use_eager_sharding(False):
    with pytest.raises(
      ConfigError,
      match=r"--config.model.depth=6 is not a positive multiple of "
      r"--config.model.time_every=4",
    ):
      _dynamics(True, depth=6, time_every=4)
    with pytest.raises(ConfigError, match=r"--config.model.enc_depth=3"):
      _tokenizer(True, enc_depth=3)
    with pytest.raises(ConfigError, match="remat_policy"):
      _dynamics(True, remat_policy="everything")
    assert len(_dynamics(False, depth=6, time_every=4).transformer.blocks) == 6  # unscanned: any depth


def test_train_state_of_the_unscanned_layout_resumes(tmp_path, dyn_pair):
  # The same two conversions around Checkpointer.restore carry a whole train state (Adam
  # moments mirror the params) from an unscanned run into a scanned model.
  import optax
  import orbax.checkpoint as ocp

  from dreamer4.training import state as st
  from dreamer4.training.checkpoint import Checkpointer

  ref, scanned = dyn_pair
  tx = optax.adamw(1e-3)
  saved = st.init_state(_params(ref), tx, {})
  saved["opt_state"] = jax.tree.map(lambda x: x + 1.0 if x.dtype == jnp.float32 else x, saved["opt_state"])
  ckpt = Checkpointer(str(tmp_path / "ckpt"), async_save=False, data_names=())
  ckpt.save(3, saved, force=True)
  ckpt.wait()
  mngr = ocp.CheckpointManager(
    str(tmp_path / "ckpt"), item_names=("state",), item_handlers={"state": ocp.StandardCheckpointHandler()}
  )
  meta = mngr.item_metadata(3)["state"]
  mngr.close()
  target = jax.eval_shape(lambda: st.init_state(_params(scanned), tx, {}))
  state = scan_layout.convert_layout(ckpt.restore(3, scan_layout.convert_layout(target, meta)), target)
  ckpt.close()
  assert jax.tree.structure(state) == jax.tree.structure(target)
  mu = state["opt_state"][0].mu["transformer"]["groups"]["blocks"][1]["mlp"]["w_up"]
  np.testing.assert_array_equal(mu[1], saved["opt_state"][0].mu["transformer"]["blocks"][3]["mlp"]["w_up"])


@pytest.mark.parametrize("saved_scanned", [False, True])
def test_restore_params_converts_the_layout_itself(tmp_path, dyn_pair, saved_scanned):
  """restore_params (and so every frozen-phase load) converts a checkpoint of the other layout."""
  from dreamer4.training.checkpoint import Checkpointer, restore_params

  ref, scanned = dyn_pair
  saved_model, target_model = (scanned, ref) if saved_scanned else (ref, scanned)
  saved = _params(saved_model)
  ckpt = Checkpointer(str(tmp_path / "ckpt"), async_save=False, data_names=())
  ckpt.save(0, {"params": saved}, force=True)
  ckpt.close()
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), _params(target_model))
  _, params = restore_params(str(tmp_path / "ckpt"), target)
  assert jax.tree.structure(params) == jax.tree.structure(target)
  _assert_trees_close(params, scan_layout.convert_layout(saved, target), atol=0)
