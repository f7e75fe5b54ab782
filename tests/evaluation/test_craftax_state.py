"""craftax_state: the parser against the env's own state on every frame of collected Craftax
episodes (and of varied states drawn by the env's renderer), and the rollout metrics.

No cell is excluded: every map cell's block (the player's and the mobs' cells included), every
cell's overlay (player sprite, mob or none), every inventory and status count, and the
asleep flag must match the env state on every frame drawn in daylight >= 0.5. Night frames
(daylight < 0.5, random static) are only checked loosely (documented in craftax_state).

The collection uses the same compiled programs as tests/data_pipelines/test_craftax.py
(size 64, 30 steps, one env, one step per call), so a session running both compiles
craftax once.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("craftax")

from data_pipelines.collect import _episode_seeds  # noqa: E402
from data_pipelines.envs import make_env  # noqa: E402
from data_pipelines.episodes import EpisodeStore  # noqa: E402
from dreamer4.evaluation import craftax_state as cs  # noqa: E402
from tests.evaluation.conftest import CRAFTAX_STORE  # noqa: E402

SIZE, MAX_STEPS, SEED = (CRAFTAX_STORE[k] for k in ("size", "max_steps", "seed"))  # the shared store's
CHUNK = 32  # frames per jitted parse / render call (one compilation each for the whole file)


@functools.cache
def _parse_program():
  return jax.jit(cs.parse)


def _parse(frames):
  """cs.parse of frames [..., 64, 64, 3] through one jitted program of CHUNK frames (padded)."""
  lead = frames.shape[:-3]
  flat = frames.reshape((-1,) + frames.shape[-3:])
  n = len(flat)
  flat = np.concatenate([flat, np.zeros((-n % CHUNK,) + flat.shape[1:], flat.dtype)])
  outs = [jax.device_get(_parse_program()(flat[i : i + CHUNK])) for i in range(0, len(flat), CHUNK)]
  return jax.tree.map(lambda *x: np.concatenate(x)[:n].reshape(lead + x[0].shape[1:]), *outs)


def _truth(state):
  """What a frame of the (unbatched) EnvState shows, read from the state: the renderer's 7x9
  map view (out of bounds past the edge), the player sprite in the centre, the mobs in the
  renderer's draw order (zombies, cows, skeletons, arrows: the last drawn wins), the counts."""
  pos = np.asarray(state.player_position)
  world = np.asarray(state.map)
  block_RC = np.full((cs.ROWS, cs.COLS), cs.BLOCK["out_of_bounds"], np.int32)
  overlay_RC = np.zeros((cs.ROWS, cs.COLS), np.int32)
  for r in range(cs.ROWS):
    for c in range(cs.COLS):
      y, x = pos[0] + r - cs.CENTRE[0], pos[1] + c - cs.CENTRE[1]
      if 0 <= y < world.shape[0] and 0 <= x < world.shape[1]:
        block_RC[r, c] = world[y, x]
  asleep = bool(np.asarray(state.is_sleeping))
  overlay_RC[cs.CENTRE] = cs.OVERLAY["player_sleep"] if asleep else int(np.asarray(state.player_direction))
  arrow_dirs = np.asarray(state.arrow_directions)
  for kind in ("zombies", "cows", "skeletons", "arrows"):
    mobs = getattr(state, kind)
    for i, (p, on) in enumerate(zip(np.asarray(mobs.position), np.asarray(mobs.mask))):
      r, c = p[0] - pos[0] + cs.CENTRE[0], p[1] - pos[1] + cs.CENTRE[1]
      if on and 0 <= r < cs.ROWS and 0 <= c < cs.COLS:
        if kind == "arrows":
          name = next(n for n, d in cs.ARROW_DIRECTIONS.items() if d == tuple(arrow_dirs[i]))
        else:
          name = kind[:-1]
        overlay_RC[r, c] = cs.OVERLAY[name]
  inv = state.inventory
  return {
    "block_RC": block_RC,
    "overlay_RC": overlay_RC,
    "sleeping": asleep,
    "daylight": float(np.asarray(state.light_level)),
    "inventory_I": np.array([int(getattr(inv, n)) for n in cs.INVENTORY_NAMES]),
    "intrinsics_I": np.array([int(np.asarray(getattr(state, f"player_{n}"))) for n in cs.INTRINSIC_NAMES]),
  }


def _stack_truth(states):
  views = [_truth(s) for s in states]
  return {k: np.stack([np.asarray(v[k]) for v in views]) for k in views[0]}


def _assert_parse_matches(parsed, truth, daylight_tol=0.01):
  for name in ("block_RC", "overlay_RC", "inventory_I", "intrinsics_I", "sleeping"):
    got, want = np.asarray(getattr(parsed, name)), truth[name]
    bad = np.argwhere(got != want)
    assert bad.size == 0, f"{name}: {len(bad)} mismatches, first at {bad[:5].tolist()}"
  np.testing.assert_allclose(parsed.daylight, truth["daylight"], atol=daylight_tol)


@pytest.fixture(scope="module")
def episodes(craftax_store_path):
  """Frames uint8 [N, 64, 64, 3] of a store the real collector wrote, the env state on each
  (replayed with the wrapper from the collector's seeds and the stored actions), offsets."""
  store = EpisodeStore.open(craftax_store_path)
  env = make_env("craftax", size=SIZE, max_steps=MAX_STEPS)
  frames, states = [], []
  for e in range(store.num_episodes):
    ep = store.read_episode(e)
    frame, _ = env.reset(_episode_seeds(SEED, e)[0])
    replayed, ep_states = [frame], [env.state]
    for a in ep["actions_discrete"][1:]:
      frame, *_ = env.step(a)
      replayed.append(frame)
      ep_states.append(env.state)
    np.testing.assert_array_equal(np.stack(replayed), ep["frames"])  # the replay is the collected episode
    frames.append(ep["frames"])
    states.extend(jax.device_get(ep_states))
  return np.concatenate(frames), states, store.episode_offsets


@pytest.fixture(scope="module")
def render():
  """The env's own frames of EnvStates (a list of equal-shaped states), as the wrapper stores them."""
  env = cs._craftax_env()  # pylint: disable=protected-access

  @functools.partial(jax.jit, static_argnums=1)
  def draw(states, size):
    obs = jax.vmap(env.get_obs)(states)
    return jnp.clip(jnp.round(cs.resize_like_wrapper(obs, size) * 255.0), 0, 255).astype(jnp.uint8)

  def frames(states, size=SIZE):
    n = len(states)
    states = list(states) + [states[0]] * (-n % CHUNK)
    stacked = (jax.tree.map(lambda *x: jnp.stack(x), *states[i : i + CHUNK]) for i in range(0, len(states), CHUNK))
    out = [draw(batch, size) for batch in stacked]
    return np.concatenate(out)[:n]

  return frames


def test_names_match_craftax():
  from craftax.craftax_classic import constants as cc  # pylint: disable=g-import-not-at-top
  from craftax.craftax_classic.envs.craftax_state import Inventory  # pylint: disable=g-import-not-at-top

  assert cs.BLOCK_NAMES == tuple(b.name.lower() for b in sorted(cc.BlockType, key=lambda b: b.value))
  assert cs.INVENTORY_NAMES == tuple(Inventory.__dataclass_fields__)
  assert (cs.ROWS, cs.COLS) == tuple(cc.OBS_DIM) and cs.NATIVE_CELL == cc.BLOCK_PIXEL_SIZE_AGENT
  # Player sprites follow craftax's direction values (1 left, 2 right, 3 up, 4 down).
  for d, name in enumerate(("left", "right", "up", "down"), start=1):
    assert cs.OVERLAY_NAMES[d] == f"player_{name}" and cc.Action(d).name.lower() == name
    assert tuple(int(v) for v in cc.DIRECTIONS[d]) == cs.ARROW_DIRECTIONS[f"arrow_{name}"]


def test_templates_at_64px():
  t = cs.templates(SIZE)
  assert t.rows_GK.shape == (cs.GRID, 6)  # 6x6 interior pixels per cell at 64 px
  assert not t.hidden_RCJ.any()  # every block stays distinguishable under every sprite
  assert len({tuple(v) for v in t.slot_yx_Q2.tolist()}) == len(cs.SLOT_NAMES)  # one cell per slot
  assert (t.slot_yx_Q2[:, 0] < cs.INV_ROWS).all()
  # The composites each cell may show: 4 player sprites awake, 1 asleep, in the centre only.
  centre_J = t.valid_RCJ[cs.CENTRE]
  assert set(t.overlay_J[centre_J]) == set(cs.PLAYER_OVERLAYS) and centre_J.sum() == 5 * len(cs.BLOCK_NAMES)
  assert set(t.overlay_J[t.valid_RCJ[0, 0]]) == {0, *cs.MOB_OVERLAYS}


def test_parser_exact_on_every_collected_frame(episodes):
  frames, states, _ = episodes
  truth = _stack_truth(states)
  parsed = _parse(frames)
  _assert_parse_matches(parsed, truth)
  assert parsed.block_RC.shape == (len(frames), 7, 9)
  # The data shows what the test claims to cover.
  assert (truth["inventory_I"][:, cs.INVENTORY_NAMES.index("wood")] > 0).any()
  assert len(np.unique(truth["block_RC"])) >= 4 and (truth["overlay_RC"][:, cs.CENTRE[0], cs.CENTRE[1]] > 0).all()


def _varied(state, rng, light):
  """A real state with random blocks in view, mobs of every kind (arrows in every direction) on
  random cells, a random facing, sleep, inventory and status counts, and the given daylight."""
  pos = np.asarray(state.player_position)
  world = np.asarray(state.map).copy()
  y0, x0 = pos[0] - cs.CENTRE[0], pos[1] - cs.CENTRE[1]
  for r in range(cs.ROWS):
    for c in range(cs.COLS):
      if 0 <= y0 + r < world.shape[0] and 0 <= x0 + c < world.shape[1] and rng.random() < 0.5:
        world[y0 + r, x0 + c] = rng.integers(0, len(cs.BLOCK_NAMES))
  cells = [(r, c) for r in range(cs.ROWS) for c in range(cs.COLS) if (r, c) != cs.CENTRE]
  order = iter(rng.permutation(len(cells)))
  upd = {}
  for kind in ("zombies", "cows", "skeletons", "arrows"):
    mobs = getattr(state, kind)
    p = np.array([np.array(cells[next(order)]) - cs.CENTRE + pos for _ in range(mobs.mask.shape[0])], np.int32)
    upd[kind] = mobs.replace(position=p, mask=rng.random(mobs.mask.shape[0]) < 0.8)
  dirs = np.array(list(cs.ARROW_DIRECTIONS.values()), np.int32)
  upd["arrow_directions"] = dirs[rng.integers(0, 4, state.arrow_directions.shape[0])]
  inv = state.inventory.replace(**{n: np.int32(rng.integers(0, 10)) for n in cs.INVENTORY_NAMES})
  intrinsics = {f"player_{n}": np.int32(rng.integers(0, 10)) for n in cs.INTRINSIC_NAMES}
  return state.replace(
    map=world,
    inventory=inv,
    light_level=np.float32(light),
    is_sleeping=rng.random() < 0.3,
    player_direction=np.int32(rng.integers(1, 5)),
    state_rng=jax.random.PRNGKey(rng.integers(1 << 30)),
    **upd,
    **intrinsics,
  )


def test_parser_exact_on_varied_states(episodes, render):
  """All 17 blocks under random sprites (every mob kind, arrows in every direction), asleep
  or awake, random counts, daylight in [0.5, 1]: exact."""
  _, states, _ = episodes
  rng = np.random.default_rng(0)
  varied = [_varied(s, rng, rng.uniform(0.5, 1.0)) for s in states[::2]]
  truth = _stack_truth(varied)
  parsed = _parse(render(varied))
  _assert_parse_matches(parsed, truth)
  mob_cells = truth["overlay_RC"][..., None] == np.array(cs.MOB_OVERLAYS)
  assert mob_cells.any(axis=(0, 1, 2)).all() and truth["sleeping"].any() and not truth["sleeping"].all()
  assert len(np.unique(truth["block_RC"])) == len(cs.BLOCK_NAMES)
  # Night static (daylight < 0.5) is random per pixel: the status rows stay exact, the map
  # mostly (edge cells worst); not guaranteed.
  night = [_varied(s, rng, rng.uniform(0.0, 0.5)) for s in states[1::4]]
  truth = _stack_truth(night)
  parsed = _parse(render(night))
  np.testing.assert_array_equal(parsed.inventory_I, truth["inventory_I"])
  np.testing.assert_array_equal(parsed.intrinsics_I, truth["intrinsics_I"])
  assert (parsed.block_RC == truth["block_RC"]).mean() > 0.8


def test_parser_exact_at_the_native_63px(episodes, render):
  """At craftax's own 63 px (the craftax pipeline's frames: no resize, each cell its 7x7 source
  pixels) the parse is exact as well, on varied states with every block and mob kind."""
  native = cs.NATIVE_CELL * cs.GRID
  t = cs.templates(native)
  assert native == 63 and t.rows_GK.shape == (cs.GRID, cs.NATIVE_CELL) and not t.hidden_RCJ.any()
  _, states, _ = episodes
  rng = np.random.default_rng(1)
  varied = [_varied(s, rng, rng.uniform(0.5, 1.0)) for s in states[: 2 * CHUNK : 2]]
  truth = _stack_truth(varied)
  frames = render(varied, size=native)
  assert frames.shape[1:] == (native, native, 3)
  _assert_parse_matches(_parse(frames), truth)
  assert len(np.unique(truth["block_RC"])) == len(cs.BLOCK_NAMES)


def test_jit_numpy_and_float_inputs_agree(episodes):
  """Eager on numpy uint8 = jitted on jax uint8 = eager on float frames in [0, 1]; and
  parse_blocks / parse_inventory are parse's fields."""
  frames, states, _ = episodes
  frames, states = frames[:24].reshape((4, 6) + frames.shape[1:]), states[:24]  # [B, H, ...]
  eager = jax.device_get(cs.parse(frames))
  jitted = _parse(jnp.asarray(frames))
  floats = jax.device_get(cs.parse(frames.astype(np.float32) / 255.0))
  for name, a, b, c in zip(cs.CraftaxState._fields, eager, jitted, floats):
    assert np.shape(a)[:2] == (4, 6)
    if name == "daylight":  # a fitted float: equal up to rounding (XLA fuses jit and eager differently)
      np.testing.assert_allclose(a, b, atol=1e-5)
      np.testing.assert_allclose(a, c, atol=1e-5)
    else:
      np.testing.assert_array_equal(a, b)
      np.testing.assert_array_equal(a, c)
  truth = _stack_truth(states)
  np.testing.assert_array_equal(np.asarray(cs.parse_blocks(frames)).reshape(24, 7, 9), truth["block_RC"])
  slots = np.asarray(cs.parse_inventory(frames)).reshape(24, -1)
  np.testing.assert_array_equal(slots, np.concatenate([truth["inventory_I"], truth["intrinsics_I"]], -1))


def test_metrics_truth_shift_and_hold(episodes, render):
  frames, states, offsets = episodes
  B, H = 3, 8
  starts = offsets[:B] + 1
  idx_BH = starts[:, None] + np.arange(H)
  truth = _parse(frames[idx_BH])
  valid_BH = np.ones((B, H), bool)
  self_metrics = cs.rollout_metrics(cs.frame_counts(truth, truth), valid_BH, "self")
  assert all(float(v) == 1.0 for v in self_metrics.values())
  # The same states seen from one block to the right: the view shifts by one column.
  shifted = [
    s.replace(player_position=np.asarray(s.player_position) + np.array([0, 1], np.int32))
    for s in (states[i] for i in idx_BH.reshape(-1))
  ]
  gen = _parse(render(shifted).reshape((B, H) + frames.shape[1:]))
  np.testing.assert_array_equal(gen.block_RC[..., :-1], truth.block_RC[..., 1:])
  counts = cs.frame_counts(truth, gen)
  shift_metrics = cs.rollout_metrics(counts, valid_BH, "shift")
  assert float(shift_metrics["craftax_block_acc_shift"]) < 0.9
  np.testing.assert_allclose(counts["block_right"], (truth.block_RC == gen.block_RC).sum((-2, -1)))
  assert float(shift_metrics["craftax_inventory_acc_shift"]) == 1.0  # same inventory
  # Hold the frame before each window: per step, the share of cells unchanged since then.
  last = _parse(frames[starts - 1])
  held = _parse(np.repeat(frames[starts - 1][:, None], H, axis=1))  # [B, H], as the dynamics eval holds it
  hold = cs.rollout_metrics(cs.frame_counts(truth, held), valid_BH, "hold")
  want_BH = (last.block_RC[:, None] == truth.block_RC).mean((-2, -1))
  np.testing.assert_allclose(hold["craftax_block_acc_hold"], want_BH.mean(), rtol=1e-6)
  np.testing.assert_allclose(
    [hold[f"craftax_block_acc_hold_h{h + 1:02d}"] for h in range(H)], want_BH.mean(0), rtol=1e-6
  )
  # Masking: frames past the valid mask do not count; no valid frame gives NaN.
  valid_BH[:, H // 2 :] = False
  masked = cs.rollout_metrics(counts, valid_BH, "m")
  want = (truth.block_RC == gen.block_RC).mean((-2, -1))[:, : H // 2].mean()
  np.testing.assert_allclose(masked["craftax_block_acc_m"], want, rtol=1e-6)
  assert np.isnan(masked[f"craftax_block_acc_m_h{H:02d}"])
  # The table flag: near_block on the parsed map agrees with the state's own neighbourhood.
  near = np.asarray(cs.near_block(truth.block_RC, cs.TABLE))
  want_near = [
    [any(truth.block_RC[b, h, 3 + dy, 4 + dx] == cs.TABLE for dy, dx in cs.CLOSE_OFFSETS) for h in range(H)]
    for b in range(B)
  ]
  np.testing.assert_array_equal(near, want_near)


def test_dynamics_eval_reports_craftax_state_metrics(episodes):
  """The dynamics phase's eval_fn on a Craftax store picks craftax_state from the env registry
  and reports, per horizon step and over the horizon, the parsed-state accuracy of every K's
  rollout, of shuffled actions and of holding the last context frame, against the env state
  (tests/evaluation/dynamics_eval.py: the latents are the frames, the rollouts given)."""
  from tests.evaluation import dynamics_eval  # pylint: disable=g-import-not-at-top

  frames, states, offsets = episodes
  B, C, H = 3, 2, 4
  idx_BT = (np.asarray(offsets[:B]) + 1)[:, None] + np.arange(C + H)
  window = frames[idx_BT]
  truth = {
    k: v.reshape((B, H) + v.shape[1:]) for k, v in _stack_truth([states[i] for i in idx_BT[:, C:].ravel()]).items()
  }
  last = _stack_truth([states[i] for i in idx_BT[:, C - 1]])
  phase = dynamics_eval.make_phase("craftax", SIZE, C, H)
  assert phase.state_parser is cs
  valid_BT = np.ones((B, C + H), bool)
  valid_BT[2, -1] = False  # padding past an episode's end: row 2's last step does not count
  valid_BH = valid_BT[:, C:]
  shuffled = np.roll(window[:, C:], 1, axis=0)  # another window's frames, as shuffled actions roll them
  m = dynamics_eval.eval_metrics(phase, window, window[:, C:], shuffled, valid_BT)

  names = (
    "block_acc",
    "overlay_acc",
    "inventory_acc",
    "inventory_exact",
    "presence_acc",
    "intrinsics_acc",
    "table_near_acc",
  )
  steps = [""] + [f"_h{h:02d}" for h in range(1, H + 1)]
  tags = ("k1", "k4", "k4_shuffled", "hold")
  want_names = {f"craftax_{n}_{t}{s}" for n in names for t in tags for s in steps}
  want_names |= {"craftax_truth_daylight", "craftax_truth_night"}
  assert {k for k in m if k.startswith("craftax_")} == want_names
  assert not any(k.startswith("agent_acc") for k in m)  # no toy metrics
  # Every K generates the truth: every state metric is 1.
  for k in (f"craftax_{n}_{t}{s}" for n in names for t in ("k1", "k4") for s in steps):
    assert m[k] == 1.0, (k, m[k])

  def check(tag, share_BH, name):
    """The eval's per-step and horizon means of `share_BH` over the valid frames."""
    per_h = [share_BH[valid_BH[:, h], h].mean() for h in range(H)]
    np.testing.assert_allclose(
      [m[f"craftax_{name}_{tag}_h{h + 1:02d}"] for h in range(H)], per_h, rtol=1e-6, err_msg=f"{name}_{tag}"
    )
    np.testing.assert_allclose(m[f"craftax_{name}_{tag}"], share_BH[valid_BH].mean(), rtol=1e-6, err_msg=name)

  # Holding the last context frame: the share of map cells, overlays and counts unchanged
  # since then, read from the env state.
  for name, field in (
    ("block_acc", "block_RC"),
    ("overlay_acc", "overlay_RC"),
    ("inventory_acc", "inventory_I"),
    ("intrinsics_acc", "intrinsics_I"),
  ):
    same = last[field][:, None] == truth[field]
    check("hold", same.reshape(B, H, -1).mean(-1), name)
  hold_block_BH = (last["block_RC"][:, None] == truth["block_RC"]).mean((-2, -1))
  assert 0.0 < hold_block_BH[valid_BH].mean() < 1.0  # the view moves: a real reference, not a trivial 1
  # Shuffled actions (another window's frames).
  check("k4_shuffled", (np.roll(truth["block_RC"], 1, axis=0) == truth["block_RC"]).mean((-2, -1)), "block_acc")
  check("k4_shuffled", (np.roll(truth["overlay_RC"], 1, axis=0) == truth["overlay_RC"]).mean((-2, -1)), "overlay_acc")
  # The truth is in daylight: the parse is exact there.
  np.testing.assert_allclose(m["craftax_truth_daylight"], truth["daylight"][valid_BH].mean(), atol=0.01)
  assert m["craftax_truth_night"] == 0.0


class _GivenRecon:
  """A stand-in tokenizer ModelDef: params are the reconstruction [B, T, S, S, 3] it returns."""

  @staticmethod
  def merge(params):
    return lambda frames: {"recon_BTHWC": params}


def test_tokenizer_eval_reports_craftax_state_of_reconstructions(episodes):
  """The tokenizer phase's eval_fn on a Craftax store parses reconstructions back into game state
  (craftax_<name>_recon, pooled over the window's valid frames): 1 for a perfect reconstruction,
  and for another window's frames the share of cells the env state says agree."""
  from configs import tokenizer as tokenizer_config  # pylint: disable=g-import-not-at-top
  from dreamer4.phases.tokenizer import TokenizerPhase  # pylint: disable=g-import-not-at-top
  from dreamer4.training.phase import DataShapes  # pylint: disable=g-import-not-at-top

  frames, states, offsets = episodes
  B, T = 3, 2
  idx_BT = (np.asarray(offsets[:B]) + 1)[:, None] + np.arange(T)
  window = frames[idx_BT]
  truth = {k: v.reshape((B, T) + v.shape[1:]) for k, v in _stack_truth([states[i] for i in idx_BT.ravel()]).items()}
  shapes = DataShapes(path="test", frame_shape=(SIZE, SIZE, 3), env="craftax")
  phase = TokenizerPhase(tokenizer_config.get_config("tiny"), shapes)
  assert phase.state_parser is cs
  phase.model_def = _GivenRecon()
  valid_BT = np.ones((B, T), bool)
  valid_BT[2, 1] = False  # padding past an episode's end does not count
  batch = {"frames": window, "valid_T": valid_BT}
  eval_fn = jax.jit(phase.eval_fn)

  names = ("block_acc", "overlay_acc", "inventory_acc", "inventory_exact", "presence_acc", "intrinsics_acc")
  exact = jax.device_get(eval_fn(window.astype(np.float32) / 255.0, batch, {}))
  assert {k for k in exact if k.startswith("craftax_")} >= {f"craftax_{n}_recon" for n in names}
  assert not any(k.startswith("craftax_") and "_h0" in k for k in exact)  # pooled, no per-step entries
  for n in names:
    assert exact[f"craftax_{n}_recon"] == 1.0, n
  other = jax.device_get(eval_fn(np.roll(window, 1, axis=0).astype(np.float32) / 255.0, batch, {}))
  for name, field in (("block_acc", "block_RC"), ("overlay_acc", "overlay_RC"), ("inventory_acc", "inventory_I")):
    same = (np.roll(truth[field], 1, axis=0) == truth[field]).reshape(B, T, -1).mean(-1)
    np.testing.assert_allclose(other[f"craftax_{name}_recon"], same[valid_BT].mean(), rtol=1e-6, err_msg=name)
  assert other["craftax_block_acc_recon"] < 1.0
