"""dreamer4/evaluation/action_probe.py: features from parsed Craftax frames, the trivial predictors
worked by hand, and the probe on a store the real collector wrote (the shared `craftax_store_path`,
tests/evaluation/conftest.py, and a store of one goal the expert reaches in every episode)."""

import json
import os

import jax
import numpy as np
import pytest

pytest.importorskip("craftax")

from data_pipelines.collect import collect  # noqa: E402
from data_pipelines.episodes import EpisodeStore  # noqa: E402
from data_pipelines.loader import relevant_episode_ids  # noqa: E402
from data_pipelines.report import success_frames  # noqa: E402
from dreamer4.evaluation import action_probe as ap  # noqa: E402
from dreamer4.evaluation import craftax_state as cs  # noqa: E402
from tests.evaluation.conftest import CRAFTAX_STORE  # noqa: E402


def test_trivial_predictors_by_hand():
  train = np.array([3, 5, 5, 1, 5, 3])  # 5 is the most frequent
  labels = np.array([5, 2, 5, 4])
  previous = np.array([5, 2, 0, 0])  # the action stored on the frame before each label
  features = np.concatenate([np.zeros((4, 7)), np.eye(ap.NUM_ACTIONS)[previous]], -1)
  got = ap.trivial_accuracies(train, features, labels)
  assert got == {"most_frequent_action": 5, "most_frequent": 0.5, "repeat_previous": 0.5}


def test_features_are_the_parsed_frame_task_and_previous_action(craftax_store_path):
  store = EpisodeStore.open(craftax_store_path)
  episode = store.read_episode(1)
  parse = jax.jit(cs.parse)
  x, y = ap.episode_features(episode, parse)
  steps = len(episode["frames"]) - 1
  cells = cs.ROWS * cs.COLS
  nb, no = len(cs.BLOCK_NAMES), len(cs.OVERLAY_NAMES)
  assert x.shape == (steps, cells * (nb + no) + len(cs.SLOT_NAMES) + ap.NUM_TASKS + ap.NUM_ACTIONS)
  actions = episode["actions_discrete"][:, 0]
  np.testing.assert_array_equal(y, actions[1:])  # the label of frame t is the action stored on frame t + 1
  st = jax.device_get(parse(episode["frames"][:-1]))
  np.testing.assert_array_equal(x[:, : cells * nb].reshape(steps, cells, nb).argmax(-1), st.block_RC.reshape(steps, -1))
  counts = x[:, cells * (nb + no) : cells * (nb + no) + len(cs.SLOT_NAMES)] * cs.MAX_COUNT
  np.testing.assert_allclose(counts, np.concatenate([st.inventory_I, st.intrinsics_I], -1), atol=1e-5)
  tail = x[:, -ap.NUM_TASKS - ap.NUM_ACTIONS :]
  np.testing.assert_array_equal(tail[:, : ap.NUM_TASKS].argmax(-1), episode["tasks"][:-1])
  np.testing.assert_array_equal(tail[:, ap.NUM_TASKS :].argmax(-1), actions[:-1])
  assert np.all(x.sum(-1) > 0) and set(np.unique(x[:, : cells * (nb + no)])) <= {0.0, 1.0}


@pytest.fixture(scope="module")
def wood_store(tmp_path_factory):
  """10 episodes of the full-skill expert with the goal collect_wood, reached in most of them; the
  same program shapes as the shared store (64 px, 30 steps, one env), so nothing new compiles."""
  path = str(tmp_path_factory.mktemp("action_probe") / "data")
  collect("craftax", path, **dict(CRAFTAX_STORE, episodes=10, seed=2, skills=(1.0,)), goals=("collect_wood",))
  return path


def test_probe_report_on_a_collected_store(wood_store):
  store = EpisodeStore.open(wood_store)
  train_ids, eval_ids = store.split(0.3, seed=0)
  relevant = relevant_episode_ids(store, train_ids), relevant_episode_ids(store, eval_ids)
  assert relevant[0] and relevant[1]
  report = ap.action_probe(wood_store, eval_fraction=0.3, split_seed=0, steps=300, seed=0)
  assert report["episodes"] == {"train": len(train_ids), "eval": len(eval_ids)}
  assert report["relevant_episodes"] == {"train": len(relevant[0]), "eval": len(relevant[1])}
  lengths = store.episode_lengths
  assert report["labels"] == {
    "train": int(sum(lengths[e] - 1 for e in relevant[0])),
    "eval": int(sum(lengths[e] - 1 for e in relevant[1])),
  }
  # The expert acts on the state alone (skill 1.0, fixed tie-breaks): a probe of a few hundred
  # labels fits its training labels, far above the most frequent label's share.
  train_labels = np.concatenate([store.read_episode(e)["actions_discrete"][1:, 0] for e in relevant[0]])
  share = np.bincount(train_labels).max() / len(train_labels)
  assert report["probe_train"] >= 0.9 > share
  for k in ("probe", "most_frequent", "repeat_previous"):
    assert 0.0 <= report[k] <= 1.0
  # until_success: the labels up to the frame that accomplished the task (the unlocking action included).
  done_at = success_frames(store)
  short = ap.action_probe(wood_store, eval_fraction=0.3, split_seed=0, steps=3, seed=0, until_success=True)
  assert short["labels"] == {
    split: int(sum(done_at[e] - store.episode_offsets[e] for e in ids))
    for split, ids in zip(("train", "eval"), relevant)
  }
  assert short["until_success"] and not report["until_success"]
  assert 0 < short["labels"]["train"] < report["labels"]["train"]


def test_cli_writes_the_report_and_refuses_bad_input(wood_store, tmp_path, capsys):
  out = str(tmp_path / "probe.json")
  assert ap.main([f"--data={wood_store}", "--eval_fraction=0.3", "--steps=6", f"--out={out}"]) == 0
  with open(out) as f:
    report = json.load(f)
  assert report["steps"] == 6 and report["relevant_episodes"]["eval"] >= 1
  assert "held-out next-action accuracy" in capsys.readouterr().out
  toy = str(tmp_path / "toy")
  collect("toy", toy, 2, seed=0, size=16)
  for argv, needle in (
    ([f"--data={tmp_path / 'missing'}"], "no such store"),
    ([f"--data={toy}"], "Craftax frames"),
    ([f"--data={wood_store}", "--steps=0"], "--steps=0"),
    ([f"--data={wood_store}", "--eval_fraction=1"], "--eval_fraction=1.0"),
    ([f"--data={wood_store}", f"--out={tmp_path / 'no' / 'x.json'}"], "folder does not exist"),
  ):
    before = sorted(os.listdir(tmp_path))
    assert ap.main(argv + ([] if any(a.startswith("--out") for a in argv) else [f"--out={tmp_path / 'x.json'}"])) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
    assert sorted(os.listdir(tmp_path)) == before
