"""The world-model probe (dreamer4/evaluation/probe.py): its report on the session's tiny real
pipeline run checked against counts and copy-last errors computed here from the store, the
action groups of the registry, the pooling by cell on a hand example, the parsers' per-frame
scores, and the one-line errors of bad input (nothing written)."""

import contextlib
import io
import json
import os
import shutil

import numpy as np
import pytest

from data_pipelines.envs import ENVS, action_groups
from data_pipelines.envs import craftax as craftax_names
from data_pipelines.envs.base import ActionComponent, ActionSpec
from data_pipelines.episodes import EpisodeStore
from dreamer4.evaluation import probe, toy_state

HORIZON = 3


@pytest.fixture(scope="module")
def probed(world_model_run, tmp_path_factory):
  """(run, report, stdout) of one probe of the session's tiny run: every held-out window, K = 4."""
  out = str(tmp_path_factory.mktemp("probe") / "probe.json")
  buf = io.StringIO()
  with contextlib.redirect_stdout(buf):
    code = probe.main(
      [f"--workdir={world_model_run}", f"--horizon={HORIZON}", "--windows=100000", "--batch_size=64", f"--out={out}"]
    )
  assert code == 0
  with open(out) as f:
    report = json.load(f)
  return world_model_run, report, buf.getvalue()


def _held_out_targets(run):
  """Independently of the probe: every target frame (global index) of every held-out window
  (one window starts at every frame of a held-out episode; its frames C .. C+H-1 count while
  inside the episode), with its horizon step, and the context C."""
  with open(os.path.join(run, "dynamics", "config.json")) as f:
    cfg = json.load(f)
  C = int(cfg["eval"]["context_frames"])
  store = EpisodeStore.open(os.path.join(run, "data"))
  _, held = store.split(cfg["data"]["eval_fraction"], seed=cfg["data"]["split_seed"])
  targets, steps, windows = [], [], 0
  for e in held:
    begin, end = int(store.episode_offsets[e]), int(store.episode_offsets[e + 1])
    for start in range(begin, end):
      windows += 1
      for h in range(HORIZON):
        f = start + C + h
        if f < end:
          targets.append(f)
          steps.append(h)
  return store, C, np.asarray(targets), np.asarray(steps), windows, len(held)


def test_report_counts_follow_the_held_out_split(probed):
  run, report, _ = probed
  store, C, targets, steps, windows, episodes = _held_out_targets(run)
  s = report["settings"]
  assert (s["context"], s["horizon"], s["k"]) == (C, HORIZON, 4)
  assert s["windows"] == s["windows_available"] == windows
  assert s["held_out_episodes"] == episodes
  assert len(targets) > 0
  assert report["tokenizer"]["frames"] == len(targets)
  assert report["one_step"]["all"]["frames"] == len(targets)
  assert report["rollout"]["all"]["frames"] == len(targets)
  for h in range(HORIZON):
    assert report["rollout"][f"h{h + 1:02d}"]["frames"] == int(np.sum(steps == h))
  actions = store.read("actions_discrete", 0, store.num_frames)[:, 0]
  group_of = {0: "noop", 1: "vertical", 2: "vertical", 3: "horizontal", 4: "horizontal"}
  for group in ("noop", "vertical", "horizontal"):
    want = sum(group_of[int(a)] == group for a in actions[targets])
    assert report["one_step"][group]["frames"] == want
  assert sum(report["one_step"][g]["frames"] for g in ("noop", "vertical", "horizontal")) == len(targets)


def test_copy_last_latent_error_is_the_consecutive_true_latents_difference(probed):
  run, report, _ = probed
  store, C, targets, steps, _, _ = _held_out_targets(run)
  z = store.read("latents", 0, store.num_frames).astype(np.float64)
  per_frame = np.mean(np.square(z[targets] - z[targets - 1]), axis=(1, 2))
  np.testing.assert_allclose(report["one_step"]["all"]["latent_mse_copy_last"], per_frame.mean(), rtol=1e-5)
  actions = store.read("actions_discrete", 0, store.num_frames)[targets, 0]
  vertical = (actions == 1) | (actions == 2)
  np.testing.assert_allclose(
    report["one_step"]["vertical"]["latent_mse_copy_last"], per_frame[vertical].mean(), rtol=1e-5
  )
  # Holding the last context frame: frame (target - h) - 1 is window's last context frame.
  held = np.mean(np.square(z[targets] - z[targets - steps - 1]), axis=(1, 2))
  for h in range(HORIZON):
    np.testing.assert_allclose(
      report["rollout"][f"h{h + 1:02d}"]["latent_mse_hold_last"], held[steps == h].mean(), rtol=1e-5
    )
  # The copied frame's parse: real frames parse exactly, so the agent cell is kept iff it did not move.
  frames = store.read("frames", 0, store.num_frames)
  cell = np.asarray(toy_state.parse(frames).agent_cell)
  np.testing.assert_allclose(
    report["one_step"]["all"]["agent_acc_copy_last"], np.mean(cell[targets] == cell[targets - 1]), rtol=1e-6
  )
  assert report["one_step"]["noop"]["agent_acc_copy_last"] == 1.0  # noop never moves the agent


def test_hold_decoded_scores_the_decoded_last_context_frame(probed):
  """`_hold_decoded`: horizon step h of every window scored against the tokenizer's decoding of the
  window's last context frame (global frame target - h - 1, decoded after the context frames before
  it, as the tokenizer is causal in time), computed here from the store; `psnr_hold_last` the same
  for the real last context frame."""
  from dreamer4 import runs

  run, report, _ = probed
  store, C, targets, steps, _, _ = _held_out_targets(run)
  _, tok_def, tok_params, _ = runs.load_tokenizer(
    os.path.join(run, "tokenizer"), probe._single_device_mesh(), store.frame_shape
  )
  z = np.asarray(store.read("latents", 0, store.num_frames), np.float32)
  context = (targets - steps - C)[:, None] + np.arange(C)[None, :]  # the window's context frames
  decoded = np.asarray(tok_def.merge(tok_params).decode(z[context]), np.float64)[:, -1]  # decoded in context
  real = store.read("frames", 0, store.num_frames)[targets]
  mse_of = lambda x: np.mean(np.square(x - real / 255.0), axis=(1, 2, 3))
  psnr_of = lambda x: 10 * np.log10(1.0 / np.maximum(mse_of(x), 1e-10))
  psnr = psnr_of(decoded)
  held_real = store.read("frames", 0, store.num_frames)[targets - steps - 1] / 255.0  # the real held frame
  psnr_real, mse_real = psnr_of(held_real), mse_of(held_real)
  hits = np.asarray(toy_state.parse(decoded).agent_cell) == np.asarray(toy_state.parse(real).agent_cell)
  hits = hits.all(axis=-1) if hits.ndim > 1 else hits
  for h in range(HORIZON):
    row = report["rollout"][f"h{h + 1:02d}"]
    np.testing.assert_allclose(row["psnr_hold_decoded"], psnr[steps == h].mean(), rtol=1e-4)
    np.testing.assert_allclose(row["psnr_hold_last"], psnr_real[steps == h].mean(), rtol=1e-4)
    np.testing.assert_allclose(row["pixel_mse_hold_last"], mse_real[steps == h].mean(), rtol=1e-4)
    np.testing.assert_allclose(row["agent_acc_hold_decoded"], hits[steps == h].mean(), rtol=1e-5, atol=1e-6)
    assert np.isfinite(row["psnr"])
    # A mean of per-frame PSNR is at least the PSNR of the mean pixel MSE (Jensen: -log is convex).
    for psnr_key, mse_key in (("psnr", "pixel_mse"), ("psnr_hold_last", "pixel_mse_hold_last")):
      assert row[psnr_key] >= 10 * np.log10(1.0 / row[mse_key]) - 1e-3


def test_report_values_are_in_range_and_printed(probed):
  _, report, stdout = probed
  assert report["env"] == "toy" and report["dynamics_step"] == 2
  assert report["events"] is None and report["settings"]["max_events"] == 128  # craftax runs only
  assert report["scores"] == ["agent_acc", "state_match"]
  assert report["action_groups"] == {
    "noop": "noop",
    "up": "vertical",
    "down": "vertical",
    "left": "horizontal",
    "right": "horizontal",
  }
  assert np.isfinite(report["tokenizer"]["psnr"])
  for section in ("one_step", "rollout"):
    for row in report[section].values():
      for key, value in row.items():
        if key == "frames" or value is None:
          continue
        if key.startswith("latent_mse"):
          assert value >= 0.0, (section, key)
        elif key.startswith("psnr"):
          assert 0.0 < value < 100.0, (section, key)
        else:
          assert 0.0 <= value <= 1.0, (section, key)
  for name in report["scores"]:
    assert 0.0 <= report["tokenizer"][name] <= 1.0
  for line in ("tokenizer:", "one step, teacher-forced", "vertical", "free rollout", "hold_decoded", "h03", "written:"):
    assert line in stdout


def test_action_groups_of_the_registry():
  toy_spec = ActionSpec((ActionComponent("move", "discrete", 5, ("noop", "up", "down", "left", "right")),))
  groups = action_groups("toy", toy_spec)
  assert dict(enumerate(groups)) == {0: "noop", 1: "vertical", 2: "vertical", 3: "horizontal", 4: "horizontal"}
  names = craftax_names.ACTION_NAMES
  spec = ActionSpec((ActionComponent("action", "discrete", len(names), names),))
  moves = {names[i] for i, g in enumerate(action_groups("craftax", spec)) if g == "move"}
  assert moves == {"left", "right", "up", "down"}
  assert set(action_groups("craftax", spec)) == {"move", "other"}
  # An env without groups (or unknown): every action is its own group, by label.
  assert action_groups("no_such_env", toy_spec) == ("noop", "up", "down", "left", "right")
  for name, env in ENVS.items():
    assert env.action_groups, f"{name} has no action groups"


def test_cell_means_and_groups_on_a_hand_example():
  # Two windows, three horizon frames; frame (0, 2) is padding.
  hits = np.array([[1.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
  valid = np.array([[True, True, False], [True, True, True]])
  ids = np.array([[1, 3, 4], [0, 2, 4]])  # toy: up, left, right / noop, down, right
  labelled = np.array([[True, True, True], [False, True, True]])
  groups = ("noop", "vertical", "vertical", "horizontal", "horizontal")
  cells, names = probe.frame_groups(ids[..., None], labelled, groups, column=0)
  assert names == ["noop", "vertical", "horizontal", probe.UNLABELLED]
  np.testing.assert_array_equal(cells, [[1, 2, 2], [3, 1, 2]])
  out = probe.cell_means({"acc": hits}, valid, cells, names)
  # vertical: (0,0)=1, (1,1)=1 -> 2 frames, 1.0; horizontal: (0,1)=0, (1,2)=0 ((0,2) is padding)
  # -> 2 frames, 0.0; unlabelled: (1,0)=1 -> 1 frame; noop: no frame -> None.
  assert out == {
    "noop": {"frames": 0, "acc": None},
    "vertical": {"frames": 2, "acc": 1.0},
    "horizontal": {"frames": 2, "acc": 0.0},
    probe.UNLABELLED: {"frames": 1, "acc": 1.0},
  }
  per_frame = {
    "tokenizer": {"acc": hits},
    "one_step": {"acc": hits, "latent_mse": hits * 2.0},
    "rollout": {"acc": hits},
  }
  s = probe.summarise(per_frame, valid, cells, names)
  assert s["tokenizer"] == {"frames": 5, "acc": 0.6}
  assert s["one_step"]["all"] == {"frames": 5, "acc": 0.6, "latent_mse": 1.2}
  assert s["rollout"]["h01"] == {"frames": 2, "acc": 1.0}
  assert s["rollout"]["h02"] == {"frames": 2, "acc": 0.5}
  assert s["rollout"]["h03"] == {"frames": 1, "acc": 0.0}


def test_parsers_score_frames():
  from dreamer4.evaluation import craftax_state

  G = toy_state.GRID
  grid = lambda v, dtype: np.full((2, G, G), v, dtype)
  agent = grid(False, bool)
  agent[:, 0, 0] = True
  truth = toy_state.ToyState(np.array([0, 0]), np.zeros((2, 2), int), agent, grid(0, np.int32), grid(False, bool))
  goal = grid(0, np.int32)
  goal[1, 3, 3] = 1  # frame 1 shows a goal the truth lacks
  gen = truth._replace(goal_GG=goal)
  scores = {k: np.asarray(v).tolist() for k, v in toy_state.frame_scores(truth, gen).items()}
  assert scores == {"agent_acc": [1.0, 1.0], "state_match": [1.0, 0.0]}
  two = agent.copy()
  two[0, 1, 1] = True  # frame 0 shows two agents
  scores = toy_state.frame_scores(truth, truth._replace(agent_GG=two))
  assert np.asarray(scores["agent_acc"]).tolist() == [0.0, 1.0]

  R, Cc = craftax_state.ROWS, craftax_state.COLS
  block = np.full((1, R, Cc), 2, np.int32)
  state = craftax_state.CraftaxState(
    block,
    np.zeros((1, R, Cc), np.int32),
    np.zeros(1, bool),
    np.ones(1),
    np.zeros((1, 12), np.int32),
    np.zeros((1, 4), np.int32),
  )
  other = block.copy()
  other[0, :3, 0] = 4  # 3 of 63 cells differ
  scores = craftax_state.frame_scores(state, state._replace(block_RC=other))
  np.testing.assert_allclose(np.asarray(scores["block_acc"]), [60 / 63])
  assert np.asarray(scores["block_match"]).tolist() == [0.0]
  assert np.asarray(scores["inventory_match"]).tolist() == [1.0]


# ---------------------------------------------------------------------------------- bad input


def _run_bad(tmp_path, capsys, workdir):
  out = tmp_path / "out" / "probe.json"
  out.parent.mkdir(exist_ok=True)
  before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
  code = probe.main([f"--workdir={workdir}", f"--out={out}"])
  err = capsys.readouterr().err.strip()
  assert code == 2
  assert len(err.splitlines()) == 1 and err.startswith("error: ")
  assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing written
  return err


def test_missing_workdir_is_one_line(tmp_path, capsys):
  missing = tmp_path / "no_run"
  err = _run_bad(tmp_path, capsys, missing)
  assert f"--workdir={missing} does not exist" in err and "configs/pipeline.py" in err


def test_bad_events_flag_is_one_line(tmp_path, capsys, world_model_run):
  out = tmp_path / "probe.json"
  code = probe.main([f"--workdir={world_model_run}", "--events=-1", f"--out={out}"])
  err = capsys.readouterr().err.strip()
  assert code == 2 and err == "error: --events=-1 must be >= 0 (0: no events section)"
  assert not out.exists()


def test_missing_stages_are_one_line(tmp_path, capsys, world_model_run):
  run = tmp_path / "run"
  run.mkdir()
  err = _run_bad(tmp_path, capsys, run)
  assert "no dynamics run" in err and str(run / "dynamics") in err
  # A dynamics run without its tokenizer.
  (run / "dynamics" / "checkpoints" / "2").mkdir(parents=True)
  shutil.copy(os.path.join(world_model_run, "dynamics", "config.json"), run / "dynamics")
  err = _run_bad(tmp_path, capsys, run)
  assert "has no tokenizer" in err and str(run / "tokenizer") in err
  # An env without a frame-state parser.
  (run / "tokenizer" / "checkpoints" / "1").mkdir(parents=True)
  shutil.copy(os.path.join(world_model_run, "tokenizer", "config.json"), run / "tokenizer")
  shutil.copytree(os.path.join(world_model_run, "data"), run / "data")
  meta = json.loads((run / "data" / "metadata.json").read_text())
  meta["env"] = "unparsed"
  (run / "data" / "metadata.json").write_text(json.dumps(meta))
  err = _run_bad(tmp_path, capsys, run)
  assert "'unparsed', which has no frame-state parser" in err and "EnvSpec.state_parser" in err
