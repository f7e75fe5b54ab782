"""craftax_events: event detection and outcome scoring on real Craftax-Classic frames, checked
against the env's own state, and a noop counterfactual stepped in the real env.

The store is the session's `craftax_store_path` (tests/evaluation/conftest.py: expert, seed 7, 6
episodes of 30 steps), which tests/evaluation/test_craftax_state.py reads too: collected once. Its
episode 1 collects wood and places a table (achievement unlocks at its frames 2 and 29).
"""

import jax
import numpy as np
import pytest

pytest.importorskip("craftax")

from data_pipelines.collect import _episode_seeds  # noqa: E402
from data_pipelines.envs import make_env  # noqa: E402
from data_pipelines.envs.craftax import ACHIEVEMENT_NAMES, ACTION_NAMES  # noqa: E402
from data_pipelines.episodes import EpisodeStore  # noqa: E402
from dreamer4.evaluation import craftax_events as ce  # noqa: E402
from dreamer4.evaluation import craftax_state as cs  # noqa: E402
from tests.evaluation.conftest import CRAFTAX_STORE  # noqa: E402

SIZE, MAX_STEPS, SEED = (CRAFTAX_STORE[k] for k in ("size", "max_steps", "seed"))  # the shared store's
DIRECTIONS = {1: (0, -1), 2: (0, 1), 3: (-1, 0), 4: (1, 0)}  # craftax player_direction -> (drow, dcol)


@pytest.fixture(scope="module")
def episodes(craftax_store_path):
  """(store, frames [N, 64, 64, 3], env states (replayed with the wrapper), parses of every frame, env)."""
  store = EpisodeStore.open(craftax_store_path)
  env = make_env("craftax", size=SIZE, max_steps=MAX_STEPS)
  states = []
  for e in range(store.num_episodes):
    env.reset(_episode_seeds(SEED, e)[0])
    states.append(env.state)
    for a in store.read_episode(e)["actions_discrete"][1:]:
      env.step(a)
      states.append(env.state)
  frames = store.read("frames", 0, store.num_frames)
  parsed = jax.device_get(jax.jit(cs.parse)(frames))
  return store, frames, jax.device_get(states), parsed, env


def _steps(store):
  """Global indices f of every frame that follows a step (not an episode's first)."""
  firsts = set(np.asarray(store.episode_offsets[:-1]).tolist())
  return np.asarray([f for f in range(store.num_frames) if f not in firsts])


def _env_events(store, states):
  """From the env state alone: {event: bool per frame f of _steps}."""
  actions = store.read("actions_discrete", 0, store.num_frames)[:, 0]
  out = {name: [] for name in ce.EVENTS}
  for f in _steps(store):
    prev, cur = states[f - 1], states[f]
    wood = int(cur.inventory.wood) == int(prev.inventory.wood) + 1
    out["collect_wood"].append(bool(actions[f] == ACTION_NAMES.index("do") and wood))
    y, x = np.asarray(prev.player_position) + DIRECTIONS[int(prev.player_direction)]
    placed = int(np.asarray(cur.map)[y, x]) == cs.TABLE and int(np.asarray(prev.map)[y, x]) != cs.TABLE
    out["place_table"].append(bool(actions[f] == ACTION_NAMES.index("place_table") and placed))
  return {name: np.asarray(v) for name, v in out.items()}


def _take(parsed, idx):
  return jax.tree.map(lambda x: np.asarray(x)[idx], parsed)


def _detected(store, parsed):
  f = _steps(store)
  det = ce.detect(
    _take(parsed, f - 1),
    _take(parsed, f),
    store.read("actions_discrete", 0, store.num_frames)[f, 0],
    store.read("action_labelled", 0, store.num_frames)[f],
  )
  return {name: f[np.asarray(v)] for name, v in det.items()}


def test_detection_agrees_with_the_env(episodes):
  store, _, states, parsed, _ = episodes
  f = _steps(store)
  truth = _env_events(store, states)
  found = _detected(store, parsed)
  for name in ce.EVENTS:
    np.testing.assert_array_equal(found[name], f[truth[name]], err_msg=name)
  assert len(found["collect_wood"]) >= 5 and len(found["place_table"]) == 1
  # Episode 1 places its table at its frame 29, the step its achievement unlocks.
  assert found["place_table"].tolist() == [int(store.episode_offsets[1]) + 29]
  # Every achievement unlock (an event's first time in its episode) is a detected event.
  unlocks = store.read("achievement_unlocks", 0, store.num_frames)
  for name in ce.EVENTS:
    first = np.nonzero(unlocks[:, ACHIEVEMENT_NAMES.index(name)])[0]
    assert len(first) >= 1 and set(first.tolist()) <= set(found[name].tolist()), name


def test_find_events_reads_the_store(episodes):
  store, _, _, parsed, _ = episodes
  found = _detected(store, parsed)
  episode_of = np.searchsorted(np.asarray(store.episode_offsets), np.arange(store.num_frames), side="right") - 1
  for context in (1, 24):
    got = ce.find_events(store, np.arange(store.num_episodes), context=context)
    for name in ce.EVENTS:
      local = found[name] - np.asarray(store.episode_offsets)[episode_of[found[name]]]
      np.testing.assert_array_equal(got[name], found[name][local >= context], err_msg=f"{name} C={context}")
  # Frame 29 of its episode has no 30 context frames before it: the table event drops out.
  assert len(ce.find_events(store, [1], context=30)["place_table"]) == 0
  assert len(ce.find_events(store, [0, 2], context=1)["place_table"]) == 0  # episodes without a table


def test_outcome_is_one_on_the_true_next_frame_and_zero_when_held(episodes):
  store, _, _, parsed, _ = episodes
  found = _detected(store, parsed)
  for name in ce.EVENTS:
    f = found[name]
    assert np.asarray(ce.outcomes(_take(parsed, f - 1), _take(parsed, f))[name]).tolist() == [True] * len(f)
    assert np.asarray(ce.outcomes(_take(parsed, f - 1), _take(parsed, f - 1))[name]).tolist() == [False] * len(f)
  # Holding any frame never shows an outcome; the table step does not show wood collected.
  every = np.arange(store.num_frames)
  held = ce.outcomes(_take(parsed, every), _take(parsed, every))
  assert sum(int(np.sum(v)) for v in held.values()) == 0
  t = found["place_table"]
  assert not np.asarray(ce.outcomes(_take(parsed, t - 1), _take(parsed, t))["collect_wood"]).any()


def test_noop_counterfactual_shows_no_outcome(episodes):
  store, frames, _, parsed, env = episodes
  found = _detected(store, parsed)
  actions = store.read("actions_discrete", 0, store.num_frames)
  offsets = np.asarray(store.episode_offsets)
  parse = jax.jit(cs.parse)
  for name in ce.EVENTS:
    f = int(found[name][0])
    e = int(np.searchsorted(offsets, f, side="right") - 1)
    env.reset(_episode_seeds(SEED, e)[0])
    for a in actions[offsets[e] + 1 : f]:
      env.step(a)
    noop_frame, *_ = env.step(np.asarray([ACTION_NAMES.index("noop")]))
    env.reset(_episode_seeds(SEED, e)[0])
    for a in actions[offsets[e] + 1 : f + 1]:
      true_frame, *_ = env.step(a)
    np.testing.assert_array_equal(true_frame, frames[f])  # the replay reaches the stored outcome
    got = jax.device_get(parse(np.stack([noop_frame, true_frame])))
    shown = ce.outcomes(_take(parsed, [f - 1, f - 1]), got)[name]
    assert np.asarray(shown).tolist() == [False, True], name
    assert int(got.inventory_I[0, ce.WOOD]) == int(parsed.inventory_I[f - 1, ce.WOOD])  # noop keeps the wood


def test_summarise_pools_by_event_type():
  E = len(ce.EVENTS)
  per_event = {s: np.zeros((3, E)) for s in ce.SOURCES}
  per_event["true_frame"][:] = 1.0
  per_event["true_action"][:, 0] = [1.0, 0.0, 1.0]  # events 0, 1 are collect_wood, event 2 place_table
  per_event["true_action"][2, 1] = 1.0
  out = ce.summarise(per_event, np.array([0, 0, 1]), {"collect_wood": 7, "place_table": 1})
  assert out["collect_wood"]["found"] == 7 and out["collect_wood"]["frames"] == 2
  assert out["collect_wood"]["true_action"] == 0.5 and out["place_table"]["true_action"] == 1.0
  assert out["place_table"]["true_frame"] == 1.0 and out["place_table"]["noop"] == 0.0
  empty = ce.summarise({s: np.zeros((0, E)) for s in ce.SOURCES}, np.zeros(0, int), {n: 0 for n in ce.EVENTS})
  assert empty["place_table"] == {"found": 0, "frames": 0, **{s: None for s in ce.SOURCES}}


def test_event_fn_scores_every_source_of_real_events(episodes):
  """make_event_fn end to end on the store's real events with an untrained tokenizer and world
  model (the tiny pipeline's sizes, 16-px patches): the real next frame shows every event's
  outcome, the held frame none, and every source scores 0 or 1, batched in padded chunks."""
  from flax import nnx  # pylint: disable=g-import-not-at-top

  from configs import pipeline  # pylint: disable=g-import-not-at-top
  from dreamer4 import runs  # pylint: disable=g-import-not-at-top
  from dreamer4.evaluation import probe  # pylint: disable=g-import-not-at-top
  from dreamer4.models.tokenizer import Tokenizer  # pylint: disable=g-import-not-at-top
  from dreamer4.training.state import ModelDef  # pylint: disable=g-import-not-at-top

  store, _, _, _, _ = episodes
  cfg = pipeline.get_config("tiny")
  tm, dm = cfg.tokenizer.model, cfg.dynamics.model
  tm.patch_size = 16
  tok_def = ModelDef.build(lambda rng: Tokenizer.from_config(tm, (SIZE, SIZE, 3), nnx.Rngs(rng)))
  dyn_def = runs.dynamics_model_def(dm, int(tm.num_latents), int(tm.latent_dim), store.action_spec)
  C = 2
  found = ce.find_events(store, np.arange(store.num_episodes), context=C)
  frames_f = np.concatenate([found[n] for n in ce.EVENTS])
  kinds = np.concatenate([np.full(len(found[n]), i) for i, n in enumerate(ce.EVENTS)])
  E = len(frames_f)
  assert E >= 3 and set(kinds.tolist()) == {0, 1}
  batch = {n: np.stack([store.read(n, f - C, f + 1) for f in frames_f]) for n in ("frames", "actions_discrete")}
  batch["action_labelled"] = np.stack([store.read("action_labelled", f - C, f + 1) for f in frames_f])
  batch["latents"] = (
    np.random.default_rng(0).uniform(-1, 1, (E, C + 1, tm.num_latents, tm.latent_dim)).astype(np.float32)
  )
  fn = jax.jit(
    ce.make_event_fn(
      dyn_def,
      tok_def,
      context=C,
      k=1,
      k_max=int(dm.k_max),
      context_noise=float(cfg.dynamics.eval.context_noise),
      window=int(dm.context) or C + 1,
    )
  )
  params = (dyn_def.init_params(jax.random.key(1)), tok_def.init_params(jax.random.key(0)))
  with jax.set_mesh(probe._single_device_mesh()):  # pylint: disable=protected-access
    out = probe.run_batched(fn, params, batch, 2, jax.random.key(2))
  assert set(out) == set(ce.SOURCES)
  for source, v in out.items():
    assert v.shape == (E, len(ce.EVENTS)) and set(np.unique(v).tolist()) <= {0.0, 1.0}, source
  np.testing.assert_array_equal(out["true_frame"][np.arange(E), kinds], np.ones(E))
  np.testing.assert_array_equal(out["held"], np.zeros((E, len(ce.EVENTS))))
  summary = ce.summarise(out, kinds, {n: len(found[n]) for n in ce.EVENTS})
  assert summary["place_table"]["frames"] == 1 and summary["collect_wood"]["frames"] == E - 1
  assert summary["collect_wood"]["true_frame"] == 1.0 and summary["collect_wood"]["held"] == 0.0
