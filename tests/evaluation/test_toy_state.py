"""toy_state: the parser against the env's own state on every frame of collected stores, and the
rollout metrics and random-walk reference on cases whose answer is known."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from data_pipelines.collect import _episode_seeds, collect
from data_pipelines.envs.toy import GRID, MOVES, ToyWorld, _shape_masks
from data_pipelines.episodes import EpisodeStore
from dreamer4.evaluation import toy_state as ts

SEED = 0
EPISODES = 10
SKILLS = (0.9, 0.6, 0.0)  # reaching goals (and walking over wrong ones) and wandering


def _snapshot(env):
  return {"agent": env.agent_yx.copy(), "goals": env.goals_K2.copy(), "distractors": env.distractors_D2.copy()}


def _collect_and_replay(root, layout, size):
  """Frames uint8 [N, S, S, 3] of a store the real collector wrote, the env's state on each
  (replayed from the collector's seeds and the stored actions) and the episode offsets."""
  path = str(root / f"{layout}{size}")
  collect("toy", path, episodes=EPISODES, seed=SEED, skills=SKILLS, size=size, layout=layout)
  store = EpisodeStore.open(path)
  env = ToyWorld(size=size, layout=layout)
  frames, states = [], []
  for e in range(store.num_episodes):
    ep = store.read_episode(e)
    frame, _ = env.reset(_episode_seeds(SEED, e)[0])
    replayed, ep_states = [frame], [_snapshot(env)]
    for a in ep["actions_discrete"][1:]:
      frame, *_ = env.step(a)
      replayed.append(frame)
      ep_states.append(_snapshot(env))
    np.testing.assert_array_equal(np.stack(replayed), ep["frames"])  # the replay is the collected episode
    frames.append(ep["frames"])
    states.extend(ep_states)
  return np.concatenate(frames), states, store.episode_offsets


def _visible(state, size):
  """The state a frame can show: (agent cell, goal map, distractor map), hidden objects removed.

  Worked out from the env's sprite masks and draw order (distractors, goals, agent), not by
  rendering: a goal is hidden when the agent's plus covers its whole shape, a distractor when
  the goal and agent drawn over it cover its whole dot.
  """
  square, diamond, ring, plus, dot = _shape_masks(size // GRID)
  goal_masks = (square, diamond, ring)
  ay, ax = (int(v) for v in state["agent"])
  goal_GG = np.zeros((GRID, GRID), np.int32)
  goal_mask_at = {}
  for k, (y, x) in enumerate(state["goals"]):
    assert (int(y), int(x)) not in goal_mask_at  # one goal per cell, by construction
    goal_mask_at[(int(y), int(x))] = goal_masks[k]
    if (int(y), int(x)) != (ay, ax) or (goal_masks[k] & ~plus).any():
      goal_GG[y, x] = k + 1
  distractor_GG = np.zeros((GRID, GRID), bool)
  for y, x in state["distractors"]:
    cover = np.zeros_like(dot)
    cover |= goal_mask_at.get((int(y), int(x)), np.zeros_like(dot))
    if (int(y), int(x)) == (ay, ax):
      cover |= plus
    distractor_GG[y, x] |= bool((dot & ~cover).any())
  return ay * GRID + ax, goal_GG, distractor_GG


@pytest.mark.parametrize("layout,size", [("fixed", 64), ("random", 64), ("fixed", 16), ("random", 16), ("fixed", 32)])
def test_parser_exact_on_every_collected_frame(tmp_path, layout, size):
  """64: the pipeline's frame size (configs/pipeline.py collect.size); 16: the tiny pipeline's,
  where every sprite is a full 2-px block; 32: the ring and diamond hide under the agent."""
  frames_NHWC, states, _ = _collect_and_replay(tmp_path, layout, size)
  parsed = jax.device_get(jax.jit(ts.parse)(frames_NHWC))
  want = [_visible(s, size) for s in states]
  agent_N = np.array([w[0] for w in want])
  goal_NGG = np.stack([w[1] for w in want])
  distractor_NGG = np.stack([w[2] for w in want])
  # The agent is drawn last and never hidden: its cell is the env's on every frame.
  np.testing.assert_array_equal(agent_N, [s["agent"][0] * GRID + s["agent"][1] for s in states])
  np.testing.assert_array_equal(parsed.agent_cell, agent_N)
  np.testing.assert_array_equal(parsed.agent_yx, np.stack([s["agent"] for s in states]))
  np.testing.assert_array_equal(parsed.agent_GG.reshape(len(states), -1), np.eye(GRID * GRID, dtype=bool)[agent_N])
  np.testing.assert_array_equal(parsed.goal_GG, goal_NGG)
  np.testing.assert_array_equal(parsed.distractor_GG, distractor_NGG)
  # The draw order was exercised: the agent stands on a goal in some frames.
  on_goal = sum(any((s["agent"] == g).all() for g in s["goals"]) for s in states)
  assert on_goal > 0
  hidden_goals = sum(3 - int((w[1] > 0).sum()) for w in want)
  if size == 64:
    assert hidden_goals == 0  # at 8-px cells every goal shows around the agent's plus
  if size == 16:
    assert hidden_goals == on_goal  # 2-px cells: the agent's block covers the goal


def test_parser_jits_and_takes_numpy_uint8_and_float(tmp_path):
  frames_NHWC, _, _ = _collect_and_replay(tmp_path, "random", 64)
  frames_BTHWC = frames_NHWC[:24].reshape((4, 6) + frames_NHWC.shape[1:])
  eager = ts.parse(frames_BTHWC)  # numpy uint8
  jitted = jax.jit(ts.parse)(jnp.asarray(frames_BTHWC))
  as_float = jax.jit(ts.parse)(frames_BTHWC.astype(np.float32) / 255.0)  # decoded-frame input
  assert eager.agent_cell.shape == (4, 6) and eager.goal_GG.shape == (4, 6, GRID, GRID)
  assert eager.agent_yx.shape == (4, 6, 2)
  for a, b, c in zip(eager, jitted, as_float):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(c))
  # Decoded frames are never exact: mild noise (and values outside [0, 1]) changes nothing.
  noisy = frames_BTHWC / 255.0 + np.random.default_rng(0).normal(0, 0.05, frames_BTHWC.shape)
  for a, b in zip(eager, jax.jit(ts.parse)(noisy.astype(np.float32))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  with pytest.raises(ValueError, match="multiple of 8"):
    ts.parse(np.zeros((2, 20, 20, 3), np.uint8))


# ------------------------------------------------------------------ rollout metrics

C, H = 2, 6  # context frames, horizon


@pytest.fixture(scope="module")
def windows(tmp_path_factory):
  """Real windows [B, C + H] of the fixed layout at 16 px: frames, the env's states and their size."""
  frames_NHWC, states, offsets = _collect_and_replay(tmp_path_factory.mktemp("win"), "fixed", 16)
  starts = [int(offsets[e]) for e in range(len(offsets) - 1) if offsets[e + 1] - offsets[e] >= C + H]
  assert len(starts) >= 4
  idx_BT = np.array(starts)[:, None] + np.arange(C + H)
  return frames_NHWC[idx_BT], [[states[i] for i in row] for row in idx_BT]


def _metrics(truth_BHWC, gen_BHWC, valid_BH=None):
  valid_BH = np.ones(truth_BHWC.shape[:2], bool) if valid_BH is None else valid_BH
  counts = ts.frame_counts(ts.parse(truth_BHWC), ts.parse(gen_BHWC))
  return jax.device_get(ts.rollout_metrics(counts, jnp.asarray(valid_BH), "x"))


def test_metrics_of_the_truth_are_perfect(windows):
  frames_BTHWC, _ = windows
  truth = frames_BTHWC[:, C:]
  m = _metrics(truth, truth)
  names = ("agent_acc", "goal_persist", "distractor_acc", "distractor_f1")
  assert set(m) == {f"{n}_x{s}" for n in names for s in [""] + [f"_h{h:02d}" for h in range(1, H + 1)]}
  assert all(float(v) == pytest.approx(1.0) for v in m.values()), m
  # The truth's own counts: goals shown (3 unless the agent's block hides one) and distractor cells.
  _, states_BT = windows
  visible = [[_visible(s, 16) for s in row[C:]] for row in states_BT]
  t = jax.device_get(ts.truth_metrics(ts.parse(truth), np.ones(truth.shape[:2], bool)))
  assert float(t["toy_truth_goal_cells"]) == pytest.approx(np.mean([[(v[1] > 0).sum() for v in r] for r in visible]))
  assert float(t["toy_truth_distractor_cells"]) == pytest.approx(np.mean([[v[2].sum() for v in r] for r in visible]))
  # Decoded truth is float: the same answers.
  m = _metrics(truth.astype(np.float32) / 255.0, truth)
  assert all(float(v) == pytest.approx(1.0) for v in m.values()), m


def test_hold_last_frame_scores_the_share_of_steps_without_a_move(windows):
  frames_BTHWC, states_BT = windows
  held = np.repeat(frames_BTHWC[:, C - 1 : C], H, axis=1)
  m = _metrics(frames_BTHWC[:, C:], held)
  agent_BT = np.array([[s["agent"] for s in row] for row in states_BT])
  stayed_BH = (agent_BT[:, C:] == agent_BT[:, C - 1 : C]).all(-1)
  assert 0 < stayed_BH.mean() < 1  # both kinds of step occur
  for h in range(H):
    assert float(m[f"agent_acc_x_h{h + 1:02d}"]) == pytest.approx(stayed_BH[:, h].mean())
  assert float(m["agent_acc_x"]) == pytest.approx(stayed_BH.mean())


def test_agent_one_cell_off_scores_zero(windows):
  frames_BTHWC, states_BT = windows
  env = ToyWorld(size=16, layout="fixed")
  gen = np.empty_like(frames_BTHWC[:, C:])
  for b, h in itertools.product(range(gen.shape[0]), range(H)):
    s = states_BT[b][C + h]
    env.goals_K2, env.distractors_D2 = s["goals"].copy(), s["distractors"].copy()
    env.agent_yx = s["agent"] + (np.array([0, 1]) if s["agent"][1] < GRID - 1 else np.array([0, -1]))
    gen[b, h] = env.render()
  m = _metrics(frames_BTHWC[:, C:], gen)
  assert all(float(m[f"agent_acc_x_h{h:02d}"]) == 0.0 for h in range(1, H + 1))
  assert float(m["agent_acc_x"]) == 0.0


def test_metrics_read_only_valid_frames(windows):
  frames_BTHWC, _ = windows
  truth = frames_BTHWC[:, C:]
  gen = truth.copy()
  valid_BH = np.ones(truth.shape[:2], bool)
  valid_BH[0, 2:] = False  # padding after an episode's end
  valid_BH[:, -1] = False  # no valid frame at the last step
  gen[~valid_BH] = 0  # garbage where the truth is padding
  m = _metrics(truth, gen, valid_BH)
  for name in ("agent_acc", "goal_persist", "distractor_acc", "distractor_f1"):
    assert float(m[f"{name}_x"]) == pytest.approx(1.0)
    assert all(float(m[f"{name}_x_h{h:02d}"]) == pytest.approx(1.0) for h in range(1, H))
    assert np.isnan(float(m[f"{name}_x_h{H:02d}"]))
  # Without the mask the garbage counts.
  assert float(_metrics(truth, gen)["agent_acc_x"]) < 1.0


# ------------------------------------------------------------------ random-walk reference


def test_random_walk_one_step_by_hand():
  p_CC = ts.random_walk_matrices(1)[0]
  corner, edge, inner = 0, 3, 3 * GRID + 4
  # Corner (0, 0): noop, up (clamped) and left (clamped) stay; down and right move.
  assert p_CC[corner, corner] == pytest.approx(3 / 5)
  assert p_CC[corner, 1] == pytest.approx(1 / 5) and p_CC[corner, GRID] == pytest.approx(1 / 5)
  # Top edge (0, 3): noop and up stay; down, left and right move.
  assert p_CC[edge, edge] == pytest.approx(2 / 5)
  assert p_CC[edge, 2] == p_CC[edge, 4] == p_CC[edge, GRID + 3] == pytest.approx(1 / 5)
  # Inside: each of the five actions leads to its own cell.
  for dy, dx in MOVES:
    assert p_CC[inner, (3 + dy) * GRID + 4 + dx] == pytest.approx(1 / 5)
  np.testing.assert_allclose(p_CC.sum(-1), 1.0, rtol=1e-6)
  # As a metric: start in the corner; the truth stays, moves right, or jumps away.
  hits = jax.device_get(ts.random_walk_hits(np.array([corner, corner, corner]), np.array([[corner], [1], [20]])))
  np.testing.assert_allclose(hits[:, 0], [3 / 5, 1 / 5, 0.0], rtol=1e-6)


def test_random_walk_matches_every_action_sequence_in_the_env():
  """h = 1..3 against all 5^h action sequences stepped through the real env."""
  env = ToyWorld(size=16, num_distractors=0)
  env.reset(0)
  p_HCC = ts.random_walk_matrices(3)
  for start in ((0, 0), (0, 5), (4, 4), (7, 6)):
    for h in (1, 2, 3):
      count = np.zeros(GRID * GRID)
      for seq in itertools.product(range(len(MOVES)), repeat=h):
        env.agent_yx = np.array(start)
        for a in seq:
          env.step(a)
        count[env.agent_yx[0] * GRID + env.agent_yx[1]] += 1
      np.testing.assert_allclose(p_HCC[h - 1, start[0] * GRID + start[1]], count / count.sum(), atol=1e-6)


def test_random_walk_metrics_names_and_mask():
  start_B = np.array([0, 0])
  true_BH = np.array([[0, 0], [1, 9]])
  valid_BH = np.array([[True, True], [True, False]])
  m = jax.device_get(ts.random_walk_metrics(start_B, true_BH, valid_BH))
  assert set(m) == {"agent_acc_random_walk", "agent_acc_random_walk_h01", "agent_acc_random_walk_h02"}
  assert float(m["agent_acc_random_walk_h01"]) == pytest.approx((3 / 5 + 1 / 5) / 2)
  p2 = ts.random_walk_matrices(2)[1][0, 0]  # only row 0 is valid at h = 2
  assert float(m["agent_acc_random_walk_h02"]) == pytest.approx(p2)
  assert float(m["agent_acc_random_walk"]) == pytest.approx((3 / 5 + 1 / 5 + p2) / 3)


# ------------------------------------------------------------------ the dynamics evaluation


def test_dynamics_eval_reports_toy_state_metrics(windows):
  """The dynamics phase's eval_fn on a toy store picks toy_state from the env registry and
  reports, per horizon step and over the horizon, what every K's rollout, shuffled actions and
  the held last context frame get right, the random walk and the truth's counts, against the
  env state (tests/evaluation/dynamics_eval.py: the latents are the frames, the rollouts given)."""
  from tests.evaluation import dynamics_eval  # pylint: disable=g-import-not-at-top

  frames_BTHWC, states_BT = windows
  B = frames_BTHWC.shape[0]
  phase = dynamics_eval.make_phase("toy", 16, C, H)
  assert phase.state_parser is ts
  valid_BT = np.ones((B, C + H), bool)
  valid_BT[0, -2:] = False  # padding past an episode's end
  valid_BH = valid_BT[:, C:]
  truth = frames_BTHWC[:, C:]
  m = dynamics_eval.eval_metrics(phase, frames_BTHWC, truth, np.roll(truth, 1, axis=0), valid_BT)

  names = ("agent_acc", "goal_persist", "distractor_acc", "distractor_f1")
  steps = [""] + [f"_h{h:02d}" for h in range(1, H + 1)]
  want = {f"{n}_{t}{s}" for n in names for t in ("k1", "k4", "k4_shuffled", "hold") for s in steps}
  want |= {f"agent_acc_random_walk{s}" for s in steps} | {"toy_truth_goal_cells", "toy_truth_distractor_cells"}
  assert want <= set(m) and not any(k.startswith("craftax_") for k in m)
  assert all(m[f"{n}_{t}{s}"] == 1.0 for n in names for t in ("k1", "k4") for s in steps)

  vis_BT = [[_visible(s, 16) for s in row] for row in states_BT]
  agent_BT = np.array([[v[0] for v in row] for row in vis_BT])
  goal_BT = np.array([[v[1] for v in row] for row in vis_BT])
  distractor_BT = np.array([[v[2] for v in row] for row in vis_BT])

  def check(tag, name, num_BH, den_BH=None):
    """Pooled over the valid frames, per step and over the horizon: sum num / sum den."""
    den_BH = np.ones_like(num_BH) if den_BH is None else den_BH
    per_h = [num_BH[valid_BH[:, h], h].sum() / den_BH[valid_BH[:, h], h].sum() for h in range(H)]
    np.testing.assert_allclose([m[f"{name}_{tag}_h{h + 1:02d}"] for h in range(H)], per_h, rtol=1e-6, err_msg=name)
    np.testing.assert_allclose(m[f"{name}_{tag}"], num_BH[valid_BH].sum() / den_BH[valid_BH].sum(), rtol=1e-6)

  # Holding the last context frame: the agent cell, goals and distractors it still gets right.
  last = slice(C - 1, C)
  stayed_BH = (agent_BT[:, C:] == agent_BT[:, last]).astype(float)
  assert 0 < stayed_BH[valid_BH].mean() < 1  # both kinds of step occur
  check("hold", "agent_acc", stayed_BH)
  goal_true_BH = (goal_BT[:, C:] > 0).sum((-2, -1))
  check(
    "hold", "goal_persist", ((goal_BT[:, C:] > 0) & (goal_BT[:, C:] == goal_BT[:, last])).sum((-2, -1)), goal_true_BH
  )
  check("hold", "distractor_acc", (distractor_BT[:, C:] == distractor_BT[:, last]).mean((-2, -1)))
  # Shuffled actions (another window's frames).
  check("k4_shuffled", "agent_acc", (np.roll(agent_BT[:, C:], 1, axis=0) == agent_BT[:, C:]).astype(float))
  # The random walk from the last context frame's cell, and the truth's own counts.
  p_HCC = ts.random_walk_matrices(H)
  check("random_walk", "agent_acc", p_HCC[np.arange(H)[None], agent_BT[:, C - 1 : C], agent_BT[:, C:]])
  np.testing.assert_allclose(m["toy_truth_goal_cells"], goal_true_BH[valid_BH].mean(), rtol=1e-6)
  np.testing.assert_allclose(
    m["toy_truth_distractor_cells"], distractor_BT[:, C:].sum((-2, -1))[valid_BH].mean(), rtol=1e-6
  )
  # Weights: each metric's valid frames (of its horizon step, or of the whole horizon), so
  # that the trainer pools frames across batches. Without the K sweep only K = 4 remains.
  m2, w = dynamics_eval.eval_metrics(
    phase, frames_BTHWC, truth, np.roll(truth, 1, axis=0), valid_BT, sweep=False, with_weights=True
  )
  assert w["agent_acc_k4_h01"] == B and w[f"agent_acc_k4_h{H:02d}"] == B - 1 and w["agent_acc_k4"] == valid_BH.sum()
  assert w["psnr_hold_last_frame_h01"] == B and w["toy_truth_goal_cells"] == valid_BH.sum()
  assert not any("_k1" in k for k in m2) and set(m2) == {k for k in m if "_k1" not in k}
  assert all(m2[k] == m[k] or (np.isnan(m2[k]) and np.isnan(m[k])) for k in m2)


def test_dynamics_eval_holds_the_frames_the_hold_psnr_scores(windows):
  """The held reference's state metrics parse the last context latents decoded at every horizon
  step, the same frames its PSNR scores: with a stand-in decoder whose output depends on the time
  position (flipped upside down after the first step), they equal the metrics of a rollout that
  generates exactly those frames, and differ from holding the first decoded frame."""
  from tests.evaluation import dynamics_eval  # pylint: disable=g-import-not-at-top

  class PositionTokenizer(dynamics_eval.FrameTokenizer):
    def decode(self, z):
      x = super().decode(z)
      later = (jnp.arange(x.shape[1]) >= 1)[None, :, None, None, None]
      return jnp.where(later, x[:, :, ::-1], x)

  frames_BTHWC, _ = windows
  phase = dynamics_eval.make_phase("toy", 16, C, H, sampling_steps=(4,))
  phase.tok_def = PositionTokenizer(16)
  last = frames_BTHWC[:, C - 1 : C]
  held = np.concatenate([last, np.repeat(last[:, :, ::-1], H - 1, axis=1)], axis=1)  # decode of the held latents
  truth = frames_BTHWC[:, C:]
  m = dynamics_eval.eval_metrics(phase, frames_BTHWC, held, np.roll(truth, 1, axis=0))
  for name in ("agent_acc", "goal_persist", "distractor_acc", "distractor_f1"):
    for s in [""] + [f"_h{h:02d}" for h in range(1, H + 1)]:
      assert m[f"{name}_hold{s}"] == pytest.approx(m[f"{name}_k4{s}"], abs=1e-6), (name, s)
  assert m["psnr_hold_last_frame"] == pytest.approx(m["psnr_k4"], abs=1e-4)
  # Holding the first decoded frame instead would score other cells after the first step.
  flipped_cells = np.asarray(ts.parse(last[:, 0, ::-1]).agent_cell)
  assert np.any(flipped_cells != np.asarray(ts.parse(last[:, 0]).agent_cell))


def test_a_frame_with_no_agent_or_two_agents_is_not_a_hit(windows):
  """`parse` names an agent cell for every frame; a hit also needs exactly one agent drawn."""
  frames_BTHWC, states_BT = windows
  truth = frames_BTHWC[:1, C : C + 2]
  s = states_BT[0][C]
  env = ToyWorld(size=16, layout="fixed")
  env.goals_K2, env.distractors_D2 = s["goals"].copy(), s["distractors"].copy()
  env.agent_yx = s["agent"].copy()
  one = env.render()
  # Two agents: the true cell plus a copy of the agent's cell pasted into an empty corner cell.
  cell = 16 // GRID
  y, x = (int(v) * cell for v in s["agent"])
  two = one.copy()
  taken = {tuple(int(v) for v in c) for c in [s["agent"], *s["goals"], *s["distractors"]]}
  cy, cx = next(c for c in [(0, 0), (0, GRID - 1), (GRID - 1, 0), (GRID - 1, GRID - 1)] if c not in taken)
  ty, tx = cy * cell, cx * cell
  two[ty : ty + cell, tx : tx + cell] = one[y : y + cell, x : x + cell]
  # No agent: the agent's cell painted with the background of an empty cell.
  none = one.copy()
  none[y : y + cell, x : x + cell] = one[ty : ty + cell, tx : tx + cell]
  gen = np.stack([two, none])[None]
  parsed = ts.parse(gen)
  assert [int(np.asarray(parsed.agent_GG[0, i]).sum()) for i in range(2)] == [2, 0]
  counts = jax.device_get(ts.frame_counts(ts.parse(np.stack([one, one])[None]), parsed))
  assert counts["agent_hit"].tolist() == [[0.0, 0.0]]
  assert jax.device_get(ts.frame_counts(ts.parse(truth), ts.parse(truth)))["agent_hit"].tolist() == [[1.0, 1.0]]
