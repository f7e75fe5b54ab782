"""env_eval: real ToyWorld episodes, real stores and real TensorBoard files, checked against direct counts."""

import dataclasses
import json
import os

import numpy as np
import pytest

from data_pipelines.envs.toy import ToyWorld
from data_pipelines.episodes import EpisodeStore
from data_pipelines.report import compute_report
from dreamer4.evaluation import env_eval as ev
from dreamer4.evaluation import report as table
from tests.evaluation.scripted_policy import ScriptedPolicyAdapter, evaluate_scripted

ENV_KW = {"size": 16, "max_steps": 32}
N = 12  # episodes per run: 4 per task


def _run(policy, seed=0, batch_size=4, **kw):
  run = evaluate_scripted if isinstance(policy, ScriptedPolicyAdapter) else ev.evaluate
  return run("toy", policy, num_episodes=N, seed=seed, batch_size=batch_size, env_kwargs=ENV_KW, **kw)


@pytest.fixture(scope="module")
def scripted():
  return _run(ScriptedPolicyAdapter(1.0))


@pytest.fixture(scope="module")
def random_row():
  return _run(ev.RandomPolicy(ToyWorld.action_spec))


def test_scripted_succeeds_and_beats_random(scripted, random_row):
  assert scripted.success_rate >= 0.9 and scripted.mean_success >= 0.9
  assert all(t.success_rate >= 0.75 for t in scripted.tasks.values())
  assert random_row.mean_success < scripted.mean_success
  assert random_row.length.mean > scripted.length.mean
  # Toy rewards are 1 exactly on success, so the return equals the success indicator.
  for row in (scripted, random_row):
    pe = row.per_episode
    assert pe["return"] == [float(s) for s in pe["success"]]
    assert pe["terminal"] == pe["success"]
    assert row.returns.mean == pytest.approx(np.mean(pe["return"]))
    assert row.returns.std == pytest.approx(np.std(pe["return"]))
    assert row.length.mean == pytest.approx(np.mean(pe["length"]))
    assert max(pe["length"]) <= ENV_KW["max_steps"]
    # A failed episode ran to the env's truncation.
    assert all(n == ENV_KW["max_steps"] for n, s in zip(pe["length"], pe["success"]) if not s)


def test_per_task_counts_sum_to_num_episodes(scripted, random_row):
  for row in (scripted, random_row):
    assert row.episodes == N
    assert sum(t.episodes for t in row.tasks.values()) == N
    assert [t.episodes for t in row.tasks.values()] == [4, 4, 4]  # tasks cycle evenly
    pe = row.per_episode
    for k, name in enumerate(ToyWorld.task_names):
      mine = [s for t, s in zip(pe["task"], pe["success"]) if t == k]
      assert row.tasks[name].successes == sum(mine)
    assert row.mean_success == pytest.approx(np.mean([t.success_rate for t in row.tasks.values()]))


def test_seeding_and_videos(scripted):
  again = _run(ScriptedPolicyAdapter(1.0))
  assert again.per_episode == scripted.per_episode
  for a, b in zip(again.videos, scripted.videos):
    np.testing.assert_array_equal(a, b)
  r0 = _run(ev.RandomPolicy(ToyWorld.action_spec), seed=0)
  assert _run(ev.RandomPolicy(ToyWorld.action_spec), seed=0).per_episode == r0.per_episode
  other = _run(ev.RandomPolicy(ToyWorld.action_spec), seed=1)
  assert other.per_episode["length"] != r0.per_episode["length"]
  # Episode i resets with seed*100003 + i and its cycled task; videos are the real frames.
  assert len(scripted.videos) == 2 and scripted.video_tasks == ["reach_red", "reach_green"]
  for i, video in enumerate(scripted.videos):
    first, _ = ToyWorld(**ENV_KW).reset(0 * 100003 + i, task=i)
    np.testing.assert_array_equal(video[0], first)
    assert video.dtype == np.uint8 and len(video) == scripted.per_episode["length"][i] + 1
  seed1 = ToyWorld(**ENV_KW).reset(1 * 100003 + 0, task=0)[0]
  assert not np.array_equal(seed1, scripted.videos[0][0])


class _Recorder(ScriptedPolicyAdapter):
  """The scripted expert; checks the frames contract (finished rows get their last frame repeated)."""

  def __init__(self):
    super().__init__(1.0, name="recorder")
    self.calls = []

  def begin(self, frames_BHWC, tasks_B, rng):
    assert frames_BHWC.dtype == np.uint8 and frames_BHWC.shape[1:] == (16, 16, 3)
    assert tasks_B.dtype == np.int32
    self.calls.append(("begin", frames_BHWC.copy(), tasks_B.copy()))
    return super().begin(frames_BHWC, tasks_B, rng)

  def next(self, frames_BHWC, actions_BA, rng):
    assert actions_BA.shape == (len(frames_BHWC), 1) and actions_BA.dtype == np.int32
    self.calls.append(("next", frames_BHWC.copy(), None))
    return super().next(frames_BHWC, actions_BA, rng)


def test_policy_contract_batches_and_finished_rows():
  pol = _Recorder()
  row = evaluate_scripted("toy", pol, num_episodes=5, seed=3, batch_size=3, env_kwargs=ENV_KW, max_steps=12)
  begins = [c for c in pol.calls if c[0] == "begin"]
  assert [len(c[1]) for c in begins] == [3, 2]  # the last batch is partial
  assert list(begins[0][2]) == [0, 1, 2] and list(begins[1][2]) == [0, 1]
  assert max(row.per_episode["length"]) <= 12  # the max_steps cap
  # The first batch: one begin, then one next per step until its last episode ends.
  lengths = row.per_episode["length"][:3]
  assert len(set(lengths)) > 1, lengths  # rows end at different steps
  first_batch = [c[1] for c in pol.calls[: max(lengths)]]
  assert pol.calls[max(lengths)][0] == "begin"
  checked = 0
  for j, n in enumerate(lengths):
    for later in first_batch[n + 1 :]:  # a row that ended keeps its last frame
      np.testing.assert_array_equal(later[j], first_batch[n][j])
      checked += 1
  assert checked


def test_behaviour_table_matches_raw_recount(tiny_store):
  row = ev.behaviour_table(tiny_store, video_episodes=3)
  store = EpisodeStore.open(tiny_store)
  eps = [store.read_episode(e) for e in range(store.num_episodes)]
  returns = np.array([ep["rewards"].sum() for ep in eps])
  tasks = np.array([ep["tasks"][0] for ep in eps])
  lengths = np.array([len(ep["rewards"]) - 1 for ep in eps])
  assert row.episodes == store.num_episodes == 24
  assert row.returns.mean == pytest.approx(returns.mean())
  assert row.returns.std == pytest.approx(returns.std())
  assert row.length.mean == pytest.approx(lengths.mean())
  total = 0
  for k, name in enumerate(store.task_names):
    mine = tasks == k
    if not mine.any():
      assert name not in row.tasks
      continue
    assert row.tasks[name].episodes == mine.sum()
    assert row.tasks[name].successes == (returns[mine] > 0).sum()
    total += mine.sum()
  assert total == 24
  # The same success rates as the dataset report.
  report = {t["task"]: t for t in compute_report(store)["tasks"]}
  for name, t in row.tasks.items():
    assert t.success_rate == pytest.approx(report[name]["success_rate"])
  assert len(row.videos) == 3
  np.testing.assert_array_equal(row.videos[1], eps[1]["frames"])
  # Restricted to some tasks (as evaluate(..., tasks=...)): only those episodes count.
  only = ev.behaviour_table(tiny_store, video_episodes=1, tasks=["reach_blue", "reach_red"])
  keep = np.isin(tasks, [store.task_names.index("reach_blue"), store.task_names.index("reach_red")])
  assert set(only.tasks) == {"reach_red", "reach_blue"} and only.episodes == keep.sum() < 24
  assert only.returns.mean == pytest.approx(returns[keep].mean())
  assert only.tasks["reach_red"] == row.tasks["reach_red"]
  first = int(np.flatnonzero(keep)[0])
  np.testing.assert_array_equal(only.videos[0], eps[first]["frames"])
  with pytest.raises(ValueError, match="tasks: unknown task 'reach_purple'"):
    ev.behaviour_table(tiny_store, tasks=["reach_purple"])


def test_aggregate_seeds():
  rows = [_run(ev.RandomPolicy(ToyWorld.action_spec), seed=s) for s in range(3)]
  agg = table.aggregate_seeds(rows)
  assert agg.num_seeds == 3 and agg.seeds == [0, 1, 2] and agg.episodes == 3 * N
  ms = [r.mean_success for r in rows]
  assert agg.mean_success == pytest.approx(np.mean(ms))
  assert agg.mean_success_std == pytest.approx(np.std(ms, ddof=1))
  for t in agg.tasks:
    rates = [r.tasks[t].success_rate for r in rows]
    assert agg.tasks[t].success_rate == pytest.approx(np.mean(rates))
    assert agg.tasks[t].success_rate_std == pytest.approx(np.std(rates, ddof=1))
  means = [r.returns.mean for r in rows]
  assert dataclasses.asdict(agg.returns) == pytest.approx(
    {"mean": np.mean(means), "std": np.std(means, ddof=1), "over": "seeds"}
  )
  assert [p["seed"] for p in agg.per_seed] == [0, 1, 2] and [p["index"] for p in agg.per_seed] == [0, 1, 2]
  assert [p["mean_success"] for p in agg.per_seed] == ms
  assert [p["return_mean"] for p in agg.per_seed] == means
  assert agg.per_seed[1]["tasks"] == {t: v.success_rate for t, v in rows[1].tasks.items()}
  with pytest.raises(ValueError, match="aggregate_seeds"):
    table.aggregate_seeds([])


def test_write_table_files_and_tensorboard(tmp_path, scripted, random_row, tiny_store):
  behaviour = ev.behaviour_table(tiny_store)
  agg = table.aggregate_seeds([scripted, _run(ScriptedPolicyAdapter(1.0), seed=1)])
  rows = {"random": random_row, "behaviour data": behaviour, "scripted": scripted, "WM+BC (3 seeds)": agg}
  out = table.write_table(rows, str(tmp_path))
  md = (tmp_path / "results.md").read_text()
  for name in rows:
    assert f"| {name} |" in md
  assert "| agent | reach_red | reach_green | reach_blue | mean success |" in md
  assert f"| random | {100 * random_row.tasks['reach_red'].success_rate:.1f} |" in md
  assert " ± " in md.split("| WM+BC (3 seeds) |")[1].split("\n")[0]
  per_seed = ", ".join(f"{p['index']}: {100 * p['mean_success']:.1f}" for p in agg.per_seed)
  assert f"- WM+BC (3 seeds): {per_seed}\n" in md and per_seed.startswith("0: ") and ", 1: " in per_seed
  data = json.loads((tmp_path / "results.json").read_text())
  assert list(data["rows"]) == list(rows)
  # Paired differences: the last seeded row against each other row, seed by seed.
  (vs_behaviour,) = [d for d in data["paired"] if d["against"] == "behaviour data"]
  want = [p["mean_success"] - behaviour.mean_success for p in agg.per_seed]
  assert vs_behaviour["agent"] == "WM+BC (3 seeds)" and vs_behaviour["differences"] == pytest.approx(want)
  assert vs_behaviour["positive"] == sum(w > 0 for w in want) and vs_behaviour["mean"] == pytest.approx(np.mean(want))
  assert f"positive on {vs_behaviour['positive']} of 2 seeds" in md
  assert data["rows"]["random"]["tasks"] == random_row.to_json()["tasks"]
  assert data["rows"]["behaviour data"]["episodes"] == 24
  assert data["tags"] == {
    "random": "random",
    "behaviour data": "behaviour_data",
    "scripted": "scripted",
    "WM+BC (3 seeds)": "WM_BC_3_seeds",
  }
  assert not [f for f in os.listdir(tmp_path) if ".tmp." in f]
  from PIL import Image

  for tag in data["tags"].values():
    gif = tmp_path / "videos" / f"env_eval_{tag}.gif"
    with Image.open(gif) as im:
      assert im.n_frames > 1
  assert out["written"][:2] == [str(tmp_path / "results.md"), str(tmp_path / "results.json")]

  from tensorboard.backend.event_processing import event_accumulator

  acc = event_accumulator.EventAccumulator(str(tmp_path), size_guidance={"tensors": 0})
  acc.Reload()
  tags = set(acc.Tags()["tensors"])

  def scalar(tag):
    return float(
      np.asarray(
        acc.Tensors(tag)[-1].tensor_proto.float_val
        or [np.frombuffer(acc.Tensors(tag)[-1].tensor_proto.tensor_content, np.float32)[0]]
      )[0]
    )

  for name, row in rows.items():
    for metric, value in table.flat_metrics(row).items():
      tag = f"env_eval/{data['tags'][name]}/{metric}"
      assert tag in tags, tag
      assert scalar(tag) == pytest.approx(value, rel=1e-5, abs=1e-6)
  assert "env_eval/WM_BC_3_seeds/mean_success_seed_std" in tags
  assert "env_eval/random/episodes" in tags  # the image strip


def test_bad_input_is_one_line():
  pol = ev.RandomPolicy(ToyWorld.action_spec)
  with pytest.raises(ValueError, match=r"^env_name: unknown env 'nope'; choose one of craftax, toy$") as err:
    ev.evaluate("nope", pol, num_episodes=1, seed=0, batch_size=1)
  assert "\n" not in str(err.value)
  with pytest.raises(ValueError, match=r"^tasks: unknown task 'reach_pink' for env 'toy'"):
    ev.evaluate("toy", pol, num_episodes=1, seed=0, batch_size=1, tasks=["reach_red", "reach_pink"])
  with pytest.raises(ValueError, match=r"^num_episodes: must be an integer >= 1"):
    ev.evaluate("toy", pol, num_episodes=0, seed=0, batch_size=1)
  with pytest.raises(ValueError, match=r"^env_kwargs: ToyWorld: size must be"):
    ev.evaluate("toy", pol, num_episodes=1, seed=0, batch_size=1, env_kwargs={"size": 12})

  class Bad(ev.RandomPolicy):
    name = "bad"

    def begin(self, frames_BHWC, tasks_B, rng):
      return np.zeros((len(frames_BHWC),), np.int32)

  with pytest.raises(ValueError, match=r"^policy 'bad': begin returned actions of shape \[2\]"):
    ev.evaluate("toy", Bad(ToyWorld.action_spec), num_episodes=2, seed=0, batch_size=2, env_kwargs=ENV_KW)
  # Only the given tasks are played.
  row = ev.evaluate("toy", pol, num_episodes=3, seed=0, batch_size=3, env_kwargs=ENV_KW, tasks=["reach_blue"])
  assert list(row.tasks) == ["reach_blue"] and row.tasks["reach_blue"].episodes == 3


def test_paired_differences_hand_example():
  """Two seeded agents over 3 seeds and one unseeded baseline; numbers worked out by hand."""

  def row(per_seed, mean):
    return table.Row(
      env="toy",
      policy="p",
      episodes=1,
      tasks={},
      mean_success=mean,
      success_rate=mean,
      returns=table.Spread(mean, 0.0, "seeds"),
      length=table.Spread(1.0, 0.0, "seeds"),
      per_seed=[{"index": i, "seed": i, "mean_success": m} for i, m in enumerate(per_seed)] or None,
    )

  base = row([], 0.82)
  wm_bc = row([0.90, 0.70, 0.80], 0.80)
  dreamer = row([0.95, 0.65, 1.00], 0.8667)
  found = table.paired_differences({"behaviour data": base, "WM+BC": wm_bc, "Dreamer 4": dreamer})
  assert [d["against"] for d in found] == ["behaviour data", "WM+BC"]
  # vs behaviour: 0.95-0.82=+0.13, 0.65-0.82=-0.17, 1.00-0.82=+0.18 -> 2 positive, mean +0.0467
  assert found[0]["differences"] == pytest.approx([0.13, -0.17, 0.18]) and found[0]["positive"] == 2
  assert found[0]["mean"] == pytest.approx(0.14 / 3)
  # vs WM+BC: +0.05, -0.05, +0.20 -> 2 positive, mean +0.0667
  assert found[1]["differences"] == pytest.approx([0.05, -0.05, 0.20]) and found[1]["mean"] == pytest.approx(0.2 / 3)
  md = table.to_markdown({"behaviour data": base, "WM+BC": wm_bc, "Dreamer 4": dreamer})
  assert "- Dreamer 4 − WM+BC: 0: +5.0, 1: -5.0, 2: +20.0 (positive on 2 of 3 seeds, mean +6.7)" in md
