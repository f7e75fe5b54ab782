"""Phases 2 and 3 on a tiny real world-model run: warm start, task invariance, the
agent embedding of training equal to the KV-cached one, and imagination training."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from data_pipelines.envs.base import Action
from data_pipelines.episodes import EpisodeStore


@pytest.fixture(scope="module")
def run_dir(world_model_run, tmp_path_factory):
  """A copy of the session's tiny world-model run (tests/conftest.py): the agent phases write into it."""
  from tests.pipeline_helpers import copy_world_model_run

  return copy_world_model_run(world_model_run, str(tmp_path_factory.mktemp("agent") / "run"))


def _agent_config(run_dir):
  from configs import agent

  c = agent.get_config("tiny")
  c.data.path = os.path.join(run_dir, "data")
  c.dynamics_workdir = os.path.join(run_dir, "dynamics")
  c.mesh.num_devices = 1
  return c


@pytest.fixture(scope="module")
def agent_run(run_dir):
  from dreamer4.phases import run

  summary = run(_agent_config(run_dir), os.path.join(run_dir, "agent"))
  return summary


def _phase_and_params(run_dir):
  from dreamer4 import sharding as shd
  from dreamer4.phases.agent import make_phase

  c = _agent_config(run_dir)
  store = EpisodeStore.open(c.data.path)
  mesh = shd.make_mesh(c.mesh)
  phase = make_phase(c, store, mesh)
  shardings = phase.model_def.param_shardings(mesh)
  fresh = phase.model_def.init_params(jax.random.key(3))
  return phase, fresh, shardings, store


def test_warm_start_takes_every_dynamics_weight(run_dir):
  from dreamer4.training.checkpoint import restore_params
  from dreamer4.training.state import to_abstract

  phase, fresh, shardings, _ = _phase_and_params(run_dir)
  warm = phase.warm_start(fresh, shardings)
  dyn_abs = {
    k: v
    for k, v in to_abstract(fresh["dynamics"], shardings["dynamics"]).items()
    if k not in ("agent_tokens", "task_embed")
  }
  _, ckpt = restore_params(os.path.join(run_dir, "dynamics", "checkpoints"), dyn_abs)
  flat_w = jax.tree_util.tree_leaves_with_path(warm["dynamics"])
  restored = dict(jax.tree_util.tree_leaves_with_path(ckpt))
  compared = 0
  for path, leaf in flat_w:
    if path in restored:
      np.testing.assert_array_equal(np.asarray(leaf), np.asarray(restored[path]))
      compared += 1
  assert compared == len(restored) > 10
  # The new parts keep their fresh values, and the heads are untouched.
  np.testing.assert_array_equal(
    np.asarray(warm["dynamics"]["agent_tokens"]), np.asarray(fresh["dynamics"]["agent_tokens"])
  )
  np.testing.assert_array_equal(np.asarray(warm["policy"]["mlp"]["w_out"]), np.asarray(fresh["policy"]["mlp"]["w_out"]))


def test_task_changes_no_world_model_prediction_and_cache_matches_training(run_dir):
  from dreamer4.inference import kv_cache
  from dreamer4.models.agent import agent_embedding
  from dreamer4.phases.agent import context_pass

  phase, fresh, shardings, store = _phase_and_params(run_dir)
  model = phase.model_def.merge(fresh)
  dyn = model.dynamics
  B, T = 2, 3
  lat = np.asarray(store.read("latents", 0, T), np.float32)
  z = jnp.asarray(np.stack([lat, lat[::-1]]))
  disc = jnp.asarray(np.array([[[0], [1], [2]], [[3], [4], [0]]], np.int32))
  lab = jnp.asarray(np.array([[False, True, True], [True, True, True]]))
  tau = jnp.full((B, T), 5, jnp.int32)
  d = jnp.full((B, T), 1, jnp.int32)
  act = Action.from_window({"actions_discrete": disc, "action_labelled": lab})
  out_a = dyn(z, tau, d, act, tasks_BT=jnp.zeros((B, T), jnp.int32))
  out_b = dyn(z, tau, d, act, tasks_BT=jnp.full((B, T), 2, jnp.int32))
  # Nothing reads the agent token: the task changes no latent prediction, bit for bit.
  np.testing.assert_array_equal(np.asarray(out_a["z1_hat_BTNL"]), np.asarray(out_b["z1_hat_BTNL"]))
  assert float(jnp.max(jnp.abs(out_a["agent_BTKD"] - out_b["agent_BTKD"]))) > 1e-4

  # Training reads h_t from one pass over the window at the context level; imagination and
  # the real-env policy commit frames one by one to the KV cache. Same noise -> same h_t.
  tasks = jnp.array([[1] * T, [2] * T], jnp.int32)
  batch = {"latents": z, "actions_discrete": disc, "action_labelled": lab, "tasks": tasks}
  noise = jax.random.normal(jax.random.key(7), z.shape)
  h_train = context_pass(dyn, batch, noise, 0.1)
  cache = kv_cache.init_cache(dyn, B, dyn.context)
  for t in range(T):
    cache, agent = kv_cache.commit_frame(
      dyn,
      cache,
      z[:, t],
      noise[:, t],
      jax.tree.map(lambda a: a[:, t], act),
      context_noise=0.1,
      tasks_B=tasks[:, 0],
      with_agent=True,
    )
    np.testing.assert_allclose(np.asarray(agent_embedding(agent)), np.asarray(h_train[:, t]), atol=2e-4)


def test_data_mixture_routes_dynamics_to_uniform_rows_and_bc_to_relevant_rows(run_dir):
  """[P §4.1]: with relevant_B, BC reads only the relevant rows, the dynamics loss only the uniform ones."""
  from data_pipelines import loader

  phase, fresh, _, store = _phase_and_params(run_dir)
  relevant = loader.relevant_episode_ids(store, range(store.num_episodes))
  returns = [
    float(np.sum(store.read("rewards", a, b))) for a, b in zip(store.episode_offsets[:-1], store.episode_offsets[1:])
  ]
  assert relevant == [e for e, r in enumerate(returns) if r > 0] and 0 < len(relevant) < store.num_episodes
  T = phase.config.data.window
  it = loader.train_iterator(
    phase.config.data.path,
    window=T,
    batch_size=4,
    seed=0,
    episode_ids=list(range(store.num_episodes)),
    fields=phase.read_fields,
  )
  batch = {k: jnp.asarray(v) for k, v in next(it).items() if k in phase.data_fields}
  batch["relevant_B"] = jnp.asarray([False, False, True, True])
  aux = phase.init_aux()
  metrics = jax.jit(lambda p, b: phase.loss_fn(p, aux, b, jax.random.key(0), {})[1][1])
  base = metrics(fresh, batch)
  # Other actions on the uniform rows: the BC term is unchanged (the dynamics term sees them).
  acts = dict(
    batch,
    actions_discrete=(batch["actions_discrete"].at[:2].add(1) % 5),
    action_labelled=jnp.ones_like(batch["action_labelled"]),
  )
  moved = metrics(fresh, acts)
  assert float(moved["bc_nll"]) == pytest.approx(float(base["bc_nll"]), rel=1e-6)
  assert abs(float(moved["shortcut_loss"]) - float(base["shortcut_loss"])) > 1e-6
  # Other latents on the relevant rows: the dynamics term is unchanged (BC sees them).
  lat = dict(batch, latents=batch["latents"].at[2:].multiply(-1.0))
  moved = metrics(fresh, lat)
  assert float(moved["shortcut_loss"]) == pytest.approx(float(base["shortcut_loss"]), rel=1e-6)
  assert abs(float(moved["bc_nll"]) - float(base["bc_nll"])) > 1e-6
  # Without the flag every row counts for both terms.
  plain = metrics(fresh, {k: v for k, v in acts.items() if k != "relevant_B"})
  assert abs(float(plain["bc_nll"]) - float(base["bc_nll"])) > 1e-6
  # A uniform row from a task-relevant episode (relevant_episode_B) trains BC under
  # bc_rows="relevant_episodes", and not under the default, the paper's "relevant_half";
  # the dynamics term reads the uniform rows either way.
  row0 = jnp.asarray([True, False, True, True])
  flagged, moved_flagged = (dict(b, relevant_episode_B=row0) for b in (batch, acts))
  assert phase.config.loss.bc_rows == "relevant_half"
  assert float(metrics(fresh, moved_flagged)["bc_nll"]) == pytest.approx(float(base["bc_nll"]), rel=1e-6)
  phase.config.loss.bc_rows = "relevant_episodes"
  try:
    wide = jax.jit(lambda p, b: phase.loss_fn(p, aux, b, jax.random.key(0), {})[1][1])
    a, b = wide(fresh, flagged), wide(fresh, moved_flagged)
    assert abs(float(a["bc_nll"]) - float(b["bc_nll"])) > 1e-6  # row 0's actions now count for BC
    assert float(a["shortcut_loss"]) == pytest.approx(float(base["shortcut_loss"]), rel=1e-6)
  finally:
    phase.config.loss.bc_rows = "relevant_half"
  # bc_T (loss.bc_until_success): the labels of slots after the task was accomplished train
  # nothing; the same change of actions counts where bc_T is set.
  bc_T = jnp.ones(batch["action_labelled"].shape, bool).at[2:, T // 2 :].set(False)
  late = dict(batch, actions_discrete=batch["actions_discrete"].at[2:, T // 2 :].add(1) % 5)
  cut = metrics(fresh, dict(batch, bc_T=bc_T))
  assert float(metrics(fresh, dict(late, bc_T=bc_T))["bc_nll"]) == pytest.approx(float(cut["bc_nll"]), rel=1e-6)
  assert abs(float(metrics(fresh, late)["bc_nll"]) - float(base["bc_nll"])) > 1e-6
  # The held-out metrics score the same labels: bc_nll, accuracy and the label share.
  ev = jax.jit(lambda p, b: phase.eval_fn(p, b, {}))
  e_cut, e_late, e_all = ev(fresh, dict(batch, bc_T=bc_T)), ev(fresh, dict(late, bc_T=bc_T)), ev(fresh, late)
  for key in ("bc_nll", "bc_accuracy_n0", "bc_targets_frac"):
    assert float(e_late[key]) == pytest.approx(float(e_cut[key]), rel=1e-6), key
  assert float(e_cut["bc_targets_frac"]) < float(e_all["bc_targets_frac"])


def test_before_success_by_hand():
  from dreamer4.phases.agent import before_success

  # Episode 0 accomplished its task on global frame 5; episode 1 never did (its last frame, 19).
  got = before_success([3, -1, 12], [0, 0, 1], 4, np.asarray([5, 19]))
  np.testing.assert_array_equal(got, [[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 1, 1]])


def test_relevant_windows_start_before_the_goal(tmp_path):
  """data.relevant_until_success: the relevant stream's windows are exactly those anchored at or
  before the frame before each relevant episode's goal frame, and each holds a BC label; without
  it they start at every frame. Episodes of 12, 10, 9, 14 frames (offsets 0, 12, 22, 31, 45)
  are rewarded first on local frames 5, never, 2 and 13."""
  import ml_collections

  from data_pipelines import loader
  from dreamer4.phases.agent import MixtureStreams
  from dreamer4.training.phase import TrainData
  from tests.data_pipelines.helpers import FRAME, SPEC, episode

  path = str(tmp_path / "store")
  store = EpisodeStore.create(path, env="synthetic", frame_shape=FRAME, action_spec=SPEC, task_names=("a",), fps=10)
  for e, (n, hit) in enumerate([(12, 5), (10, None), (9, 2), (14, 13)]):
    ep = dict(episode(e, n), tasks_T=np.zeros((n,), np.int32), rewards_T=np.zeros((n,), np.float32))
    if hit is not None:
      ep["rewards_T"][hit:] = 1.0  # play goes on after the goal
    store.append(**ep)

  def make_iter(window, batch=4, ids=range(4), last_anchor=None):
    return loader.train_iterator(
      path, window=window, batch_size=batch, seed=0, episode_ids=list(ids), num_threads=1, last_anchor=last_anchor
    )

  def relevant_starts(until_success):
    config = ml_collections.ConfigDict(
      {
        "data": {
          "path": path,
          "window": 4,
          "relevant_fraction": 0.5,
          "relevant_until_success": until_success,
          "relabel_tasks": False,
          "task_reward": False,
        },
        "loss": {"bc_until_success": True},
      }
    )
    streams = MixtureStreams(config, TrainData(store, [0, 1, 2, 3], [], 4, make_iter), "end")
    assert streams.relevant_ids == [0, 2, 3]
    table = streams.coverage_tables("data")[0][0]
    starts = []
    for _ in range(len(table) // 2):  # one epoch of the relevant stream: 2 rows per batch
      b = streams.next("data")
      starts += list(b["start"][2:])
      if until_success:
        assert b["bc_T"][2:, 1:].any(axis=1).all()  # every relevant window holds a label
    assert len(set(starts)) == len(table) // 2 * 2 and set(starts) <= set(table)  # an epoch drops a remainder
    return sorted(int(s) for s in table)

  assert relevant_starts(True) == list(range(0, 5)) + [22, 23] + list(range(31, 44))
  assert relevant_starts(False) == list(range(0, 12)) + list(range(22, 45))


def test_relabelled_tasks_label_each_window_with_the_task_it_demonstrates(tmp_path):
  """data.relabel_tasks: the relevant rows are windows of every (episode, task) the episode
  accomplished, carrying that task and BC labels up to the frame that accomplished it. Episodes
  of 10, 8, 9 frames (offsets 0, 10, 18): episode 0 (labelled place_table) collects wood on local
  frame 2 and places the table on 5; episode 1 (collect_wood) collects wood on 3; episode 2
  (place_table) accomplishes nothing. With data.task_reward a frame's reward is 1 only where it
  unlocked its row's task."""
  import ml_collections

  from data_pipelines import loader
  from data_pipelines.report import UNLOCKS
  from data_pipelines.windows import DEFAULT_FIELDS
  from dreamer4.phases.agent import MixtureStreams
  from dreamer4.training.phase import TrainData
  from tests.data_pipelines.helpers import FRAME, SPEC, episode

  path = str(tmp_path / "store")
  tasks = ("collect_wood", "place_table")
  store = EpisodeStore.create(path, env="craftax", frame_shape=FRAME, action_spec=SPEC, task_names=tasks, fps=10)
  store.add_array(UNLOCKS, (2,), np.uint8, attrs={"names": list(tasks)})
  for e, (n, task, hits) in enumerate([(10, 1, {0: 2, 1: 5}), (8, 0, {0: 3}), (9, 1, {})]):
    unlocks = np.zeros((n, 2), np.uint8)
    for k, t in hits.items():
      unlocks[t, k] = 1
    ep = dict(episode(e, n), tasks_T=np.full((n,), task, np.int32), rewards_T=unlocks.sum(-1).astype(np.float32))
    store.append(**ep, extra={UNLOCKS: unlocks})

  def make_iter(window, batch=4, ids=range(3), last_anchor=None, demos=None):
    return loader.train_iterator(
      path,
      window=window,
      batch_size=batch,
      seed=0,
      episode_ids=list(ids),
      num_threads=1,
      last_anchor=last_anchor,
      demos=demos,
      fields=DEFAULT_FIELDS + (UNLOCKS,),
    )

  config = ml_collections.ConfigDict(
    {
      "data": {
        "path": path,
        "window": 4,
        "relevant_fraction": 0.5,
        "relevant_until_success": True,
        "relabel_tasks": True,
        "task_reward": True,
      },
      "loss": {"bc_until_success": True},
    }
  )
  streams = MixtureStreams(config, TrainData(store, [0, 1, 2], [], 4, make_iter), "end")
  assert streams.relevant_ids == [0, 1]
  # (episode, task, done frame): (0, wood, 2) anchors 0-1, (0, table, 5) anchors 0-4, (1, wood, 13) anchors 10-12
  seen = set()
  for _ in range(5):  # one epoch of the 10 relevant windows; each batch: 2 uniform rows, then 2 relevant
    b = streams.next("data")
    for row in (2, 3):
      start, ep, task = int(b["start"][row]), int(b["episode"][row]), b["tasks"][row]
      assert (task == task[0]).all()
      done = {(0, 0): 2, (0, 1): 5, (1, 0): 13}[(ep, int(task[0]))]
      assert start <= done - 1
      np.testing.assert_array_equal(b["bc_T"][row], start + np.arange(4) <= done)
      np.testing.assert_array_equal(b["rewards"][row], (start + np.arange(4) == done) & b["valid_T"][row])
      seen.add((ep, int(task[0]), start))
    # uniform rows keep their stored task and their own task's frame (episode 0: the table, on 5)
    for row in (0, 1):
      ep = int(b["episode"][row])
      own = {0: 5, 1: 13, 2: 26}[ep]
      frame_T = int(b["start"][row]) + np.arange(4)
      np.testing.assert_array_equal(b["bc_T"][row], frame_T <= own)
      np.testing.assert_array_equal(b["rewards"][row], (frame_T == {0: 5, 1: 13, 2: -1}[ep]) & b["valid_T"][row])
    assert UNLOCKS not in b
  assert seen == {(0, 0, 0), (0, 0, 1)} | {(0, 1, s) for s in range(5)} | {(1, 0, s) for s in (10, 11, 12)}


def test_task_reward_without_achievement_unlocks_names_the_setting(tmp_path):
  """data.task_reward on a store without achievement unlocks (the toy's): one error naming the setting."""
  import ml_collections

  from dreamer4.errors import UserError
  from dreamer4.phases.agent import MixtureStreams
  from dreamer4.training.phase import TrainData
  from tests.data_pipelines.helpers import make_store

  path = str(tmp_path / "store")
  store, _ = make_store(path, [6, 6])  # rewards but no unlocks
  config = ml_collections.ConfigDict(
    {
      "data": {"path": path, "window": 4, "relevant_fraction": 0.5, "relevant_until_success": True},
      "loss": {"bc_until_success": True},
    }
  )
  config.data.relabel_tasks, config.data.task_reward = False, True
  with pytest.raises(UserError, match=r"--config.data.task_reward needs the store's 'achievement_unlocks'"):
    MixtureStreams(config, TrainData(store, [0, 1], [], 4, None), "end")


def test_agent_phase_trains_and_checkpoints(agent_run, run_dir):
  assert agent_run["stop_reason"] == "finished"
  assert agent_run["step"] == 4
  assert agent_run["compiles"] == 1
  ev = agent_run["eval"]
  assert {"eval/bc_nll_n0", "eval/reward_nll_n0", "eval/bc_accuracy_n0"} <= set(ev)
  assert all(np.isfinite(v) for v in ev.values())
  assert 0.0 <= ev["eval/bc_accuracy_n0"] <= 1.0


@pytest.fixture(scope="module")
def imagine_run(agent_run, run_dir):
  from configs import imagine
  from dreamer4.phases import run

  c = imagine.get_config("tiny")
  c.data.path = os.path.join(run_dir, "data")
  c.agent_workdir = os.path.join(run_dir, "agent")
  c.mesh.num_devices = 1
  return run(c, os.path.join(run_dir, "imagine"))


def test_imagination_trains_only_the_heads(imagine_run, run_dir):
  from dreamer4.training.checkpoint import restore_params

  out = imagine_run
  assert out["stop_reason"] == "finished" and out["step"] == 4 and out["compiles"] == 1
  params = out["state"]["params"]
  assert set(params) == {"policy", "value"}
  # The policy started from the BC policy and moved; the frozen agent checkpoint is intact.
  _, bc = restore_params(
    os.path.join(run_dir, "agent", "checkpoints"),
    jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), {"policy": params["policy"]}),
  )
  moved = max(
    float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(params["policy"]), jax.tree.leaves(bc["policy"]))
  )
  assert 0 < moved < 1.0


def test_world_model_agent_acts_in_the_real_env(agent_run, run_dir):
  from data_pipelines.envs.toy import ToyWorld
  from dreamer4.evaluation.wm_policy import WorldModelAgent, load_policy

  agent = WorldModelAgent(os.path.join(run_dir, "agent"))
  envs = [ToyWorld(size=16) for _ in range(3)]

  def episode(seed):
    rng = np.random.default_rng(seed)
    frames = np.stack([e.reset(seed=i)[0] for i, e in enumerate(envs)])
    acts = [agent.begin(frames, np.array([0, 1, 2]), rng)]
    for _ in range(4):
      frames = np.stack([e.step(a)[0] for e, a in zip(envs, acts[-1][:, 0])])
      acts.append(agent.next(frames, acts[-1], rng))
    return np.stack(acts)

  a1 = episode(0)
  compiles = agent.step_compiles()
  a2 = episode(0)
  assert a1.shape == (5, 3, 1) and a1.dtype == np.int32
  assert a1.min() >= 0 and a1.max() < 5
  np.testing.assert_array_equal(a1, a2)  # seeded: the same actions again
  # A few shapes (first frame T=1, later frames T=2), never one per frame or per episode.
  assert agent.step_compiles() == compiles <= 3

  policy_fn = load_policy(os.path.join(run_dir, "agent"))
  z = np.asarray(EpisodeStore.open(os.path.join(run_dir, "data")).read("latents", 0, 3), np.float32)
  a = policy_fn(z, jax.random.key(0))
  assert a.shape == (1,) and 0 <= int(a[0]) < 5


def test_pipeline_evaluate_stage_writes_the_table(imagine_run, run_dir):
  import json

  from configs import pipeline
  from dreamer4.pipeline import evaluate_stage

  cfg = pipeline.get_config("tiny")
  res = evaluate_stage(cfg, run_dir, os.path.join(run_dir, "data"))
  rows = res["rows"]
  assert set(rows) == {"random", "behaviour data", "WM+BC", "Dreamer 4"}
  for name in ("random", "WM+BC", "Dreamer 4"):
    assert rows[name]["episodes"] == 3
    assert 0.0 <= rows[name]["success_rate"] <= 1.0
    assert sum(t["episodes"] for t in rows[name]["tasks"].values()) == 3
  md = open(os.path.join(run_dir, "evaluate", "results.md")).read()
  assert all(name in md for name in rows)
  # A finished stage is skipped: the same result, nothing recomputed.
  again = evaluate_stage(cfg, run_dir, os.path.join(run_dir, "data"))
  assert json.dumps(again, sort_keys=True) == json.dumps(res, sort_keys=True)


def test_pipeline_seeds_lay_out_and_aggregate(imagine_run, run_dir, tmp_path):
  """config.seeds = 2: seed 1's agent phases live in RUN/seed1/ and the table is mean ± std of both."""
  import shutil

  from configs import pipeline
  from dreamer4.pipeline import evaluate_stage, stage_dir

  assert stage_dir("R", "agent", 0) == os.path.join("R", "agent")
  assert stage_dir("R", "imagine", 2) == os.path.join("R", "seed2", "imagine")
  assert stage_dir("R", "dynamics", 2) == os.path.join("R", "dynamics")  # the world model is shared
  run2 = str(tmp_path / "run2")
  for name in ("data", "tokenizer", "dynamics", "agent", "imagine"):
    shutil.copytree(os.path.join(run_dir, name), os.path.join(run2, name))
  for name in ("agent", "imagine"):  # seed 1: the same weights, evaluated on other environment seeds
    shutil.copytree(os.path.join(run_dir, name), stage_dir(run2, name, 1))
  cfg = pipeline.get_config("tiny")
  cfg.seeds = 2
  rows = evaluate_stage(cfg, run2, os.path.join(run2, "data"))["rows"]
  single = evaluate_stage(pipeline.get_config("tiny"), run_dir, os.path.join(run_dir, "data"))["rows"]
  for name in ("random", "WM+BC", "Dreamer 4"):
    assert rows[name]["num_seeds"] == 2 and rows[name]["episodes"] == 6
    # Seed 0's evaluation is the single-seed one, so the mean across seeds sits between them.
    assert rows[name]["seeds"][0] == single[name]["seed"]
    lo, hi = sorted([single[name]["mean_success"], 2 * rows[name]["mean_success"] - single[name]["mean_success"]])
    assert -1e-9 <= lo <= hi <= 1 + 1e-9
  md = open(os.path.join(run2, "evaluate", "results.md")).read()
  assert "| 2 |" in md


def test_dynamics_evaluation_reports_pixel_and_latent_errors(run_dir):
  """The dynamics evaluation: per-K PSNR/SSIM, a decoder-free latent error, shuffled actions and
  the hold-the-last-frame reference, on a real held-out batch."""
  import json

  import ml_collections

  from data_pipelines import loader
  from dreamer4 import sharding as shd
  from dreamer4.phases.dynamics import make_phase
  from dreamer4.training.checkpoint import restore_params
  from dreamer4.training.state import to_abstract

  cfg = ml_collections.ConfigDict(json.loads(open(os.path.join(run_dir, "dynamics", "config.json")).read()))
  cfg.eval.sampling_steps = (1, 4)
  store = EpisodeStore.open(cfg.data.path)
  mesh = shd.make_mesh(cfg.mesh)
  phase = make_phase(cfg, store, mesh)
  shardings = phase.model_def.param_shardings(mesh)
  abstract = to_abstract(phase.model_def.init_params(jax.random.key(0)), shardings)
  _, params = restore_params(os.path.join(run_dir, "dynamics", "checkpoints"), abstract)
  T = cfg.eval.context_frames + cfg.eval.horizon
  batch = loader.eval_batches(
    cfg.data.path,
    window=T,
    batch_size=2,
    episode_ids=list(range(store.num_episodes)),
    max_batches=1,
    fields=phase.read_fields,
  )[0]
  batch = {k: jnp.asarray(v) for k, v in batch.items() if k in phase.data_fields}
  m = jax.device_get(jax.jit(phase.eval_fn)(params, batch, phase.frozen()))
  want = {
    "psnr_k1",
    "psnr_k4",
    "ssim_k4",
    "latent_mse_k1",
    "latent_mse_k4",
    "psnr_k4_h01",
    "psnr_k4_shuffled_actions",
    "latent_mse_k4_shuffled_actions",
    "psnr_hold_last_frame",
  }
  assert want <= set(m), set(m)
  assert all(np.isfinite(float(m[k])) for k in want)
  # Latents live in [-1, 1]: the squared error of a generated frame is in (0, 4].
  assert 0.0 < float(m["latent_mse_k4"]) <= 4.0 and 0.0 < float(m["latent_mse_k1"]) <= 4.0
  assert -1.0 <= float(m["ssim_k4"]) <= 1.0
  # Per-horizon latent errors average to the window's error, for true and shuffled actions.
  H = cfg.eval.horizon
  for suffix in ("k4", "k4_shuffled_actions"):
    per_h = [float(m[f"latent_mse_{suffix}_h{h:02d}"]) for h in range(1, H + 1)]
    np.testing.assert_allclose(np.mean(per_h), float(m[f"latent_mse_{suffix}"]), rtol=1e-5)
  # Holding the last context frame: its first-step latent error is the direct computation.
  C = cfg.eval.context_frames
  z = np.asarray(batch["latents"], np.float32)
  np.testing.assert_allclose(
    float(m["latent_mse_hold_last_frame_h01"]), np.mean(np.square(z[:, C - 1] - z[:, C])), rtol=1e-5
  )
  assert float(m["psnr_hold_last_frame_h01"]) > 0.0


def test_dynamics_evaluation_reports_toy_state_metrics_over_valid_frames(run_dir):
  """On a toy store the dynamics evaluation adds what the generation gets right (agent cell,
  goals, distractors; dreamer4/evaluation/toy_state.py) for each K, shuffled actions, the held
  frame and a random walk; every per-step metric reads only frames whose truth is valid."""
  import json

  import ml_collections

  from data_pipelines import loader
  from dreamer4 import sharding as shd
  from dreamer4.phases.dynamics import make_phase
  from dreamer4.training.checkpoint import restore_params
  from dreamer4.training.state import to_abstract

  cfg = ml_collections.ConfigDict(json.loads(open(os.path.join(run_dir, "dynamics", "config.json")).read()))
  cfg.eval.sampling_steps = (1, 4)
  cfg.eval.horizon = 3
  store = EpisodeStore.open(cfg.data.path)
  mesh = shd.make_mesh(cfg.mesh)
  phase = make_phase(cfg, store, mesh)
  assert phase.state_parser.__name__ == "dreamer4.evaluation.toy_state"  # from the env registry
  shardings = phase.model_def.param_shardings(mesh)
  abstract = to_abstract(phase.model_def.init_params(jax.random.key(0)), shardings)
  _, params = restore_params(os.path.join(run_dir, "dynamics", "checkpoints"), abstract)
  C, H = cfg.eval.context_frames, cfg.eval.horizon
  batch = loader.eval_batches(
    cfg.data.path,
    window=C + H,
    batch_size=2,
    episode_ids=list(range(store.num_episodes)),
    max_batches=1,
    fields=phase.read_fields,
  )[0]
  batch = {k: jnp.asarray(v) for k, v in batch.items() if k in phase.data_fields}
  # A batch without valid_T counts every frame as valid.
  np.testing.assert_array_equal(phase._valid_BH(batch), np.ones((2, H), bool))
  eval_fn = jax.jit(phase.eval_fn)
  full = jax.device_get(eval_fn(params, dict(batch, valid_T=jnp.ones((2, C + H), bool)), phase.frozen()))
  names = ("agent_acc", "goal_persist", "distractor_acc", "distractor_f1")
  steps = [""] + [f"_h{h:02d}" for h in range(1, H + 1)]
  want = {f"{n}_{tag}{s}" for n in names for tag in ("k1", "k4", "k4_shuffled", "hold") for s in steps}
  want |= {f"agent_acc_random_walk{s}" for s in steps}
  assert want <= set(full), sorted(want - set(full))
  assert all(0.0 <= float(full[k]) <= 1.0 for k in want), {k: full[k] for k in want}
  for k in ("toy_truth_goal_cells", "toy_truth_distractor_cells"):
    assert 0.0 <= float(full[k]) <= 64.0, k
  assert float(full["agent_acc_random_walk_h01"]) <= 3 / 5  # never more than staying put in a corner
  # The last horizon step is padding in every row: its metrics are NaN, the others unchanged,
  # and the horizon means are over the valid steps only.
  valid_T = np.ones((2, C + H), bool)
  valid_T[:, -1] = False
  part = jax.device_get(eval_fn(params, dict(batch, valid_T=jnp.asarray(valid_T)), phase.frozen()))
  assert set(part) == set(full)
  last = f"_h{H:02d}"
  for k in full:
    if k.endswith(last):
      assert np.isnan(float(part[k])), k
    elif k[-4:-2] == "_h":
      np.testing.assert_allclose(float(part[k]), float(full[k]), rtol=1e-6, err_msg=k)
  for base in (
    "psnr_k4",
    "latent_mse_k4",
    "agent_acc_k4",
    "agent_acc_hold",
    "agent_acc_random_walk",
    "latent_mse_k4_shuffled_actions",
  ):
    np.testing.assert_allclose(
      float(part[base]), np.mean([float(full[f"{base}_h{h:02d}"]) for h in range(1, H)]), rtol=1e-5, err_msg=base
    )


def test_mixture_batch_flags_rows_of_task_relevant_episodes():
  from dreamer4.phases.agent import with_relevant

  uniform = {"episode": np.asarray([3, 4, 7]), "index": np.arange(3)}
  relevant = {"episode": np.asarray([4, 9]), "index": np.arange(2)}
  out = with_relevant(uniform, relevant, [4, 9, 11])
  np.testing.assert_array_equal(out["episode"], [3, 4, 7, 4, 9])
  np.testing.assert_array_equal(out["relevant_B"], [False, False, False, True, True])
  np.testing.assert_array_equal(out["relevant_episode_B"], [False, True, False, True, True])


def test_dynamics_final_evaluation_sweeps_k_on_the_first_batches_only(run_dir, tmp_path):
  """The trainer's evaluation of the dynamics phase: K = 4 on every held-out batch, the other K
  of eval.sampling_steps on the first `eval.sweep_batches` only; run_summary has both. The run
  resumes at its last step (2 of 2), so it only evaluates."""
  import json
  import shutil

  import ml_collections

  from dreamer4.phases.dynamics import make_phase
  from dreamer4.training.trainer import train_and_evaluate

  work = str(tmp_path / "dynamics")
  shutil.copytree(os.path.join(run_dir, "dynamics"), work)
  cfg = ml_collections.ConfigDict(json.loads(open(os.path.join(work, "config.json")).read()))
  cfg.train.num_steps = 2
  cfg.train.stop_at_step = 0
  cfg.eval.sampling_steps = (1, 4)
  cfg.eval.num_batches = 2
  cfg.eval.sweep_batches = 1
  cfg.train.batch_size = 2
  out = train_and_evaluate(cfg, work, make_phase)
  ev = json.loads(open(os.path.join(work, "run_summary.json")).read())["eval"]
  assert out["step"] == 2
  assert {"eval/psnr_k1", "eval/psnr_k4", "eval/agent_acc_k1", "eval/agent_acc_k4"} <= set(ev), sorted(ev)
  assert not any("_weights" in k for k in ev)
  assert all(0.0 <= ev[k] <= 1.0 for k in ev if k.startswith("eval/agent_acc_k") and np.isfinite(ev[k]))
