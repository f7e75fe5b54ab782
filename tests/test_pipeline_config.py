"""The pipeline's variants and the settings it hands to the evaluation (no training here)."""

import pytest

from configs import pipeline as pipeline_config
from dreamer4 import pipeline
from dreamer4.errors import ConfigError


def test_craftax_variant_trains_the_toy_models_and_evaluates_reachable_achievements():
  from data_pipelines.envs.craftax import STAGES

  toy, cx = pipeline_config.get_config("toy"), pipeline_config.get_config("craftax")
  assert cx.collect.env == "craftax" and cx.seeds >= 3  # mean ± std over seeds in the table
  # The toy's model shapes but on Craftax's own 63x63 frames: one 7-px patch per game cell (9x9),
  # 27 latents of a third of a row each (block_skip needs whole blocks of patches), and the
  # dynamics model's tokens one row of 9 cells each.
  without = lambda d, *keys: {k: v for k, v in d.items() if k not in keys}
  tok, dyn = cx.tokenizer.model, cx.dynamics.model
  assert cx.collect.size == 63 and toy.collect.size == 64 and cx.collect.size % tok.patch_size == 0
  patches = (cx.collect.size // tok.patch_size) ** 2
  assert (patches, tok.num_latents, dyn.group) == (81, 27, 3)
  assert tok.block_skip and patches % tok.num_latents == 0 and tok.num_latents // dyn.group == 9
  assert without(tok.to_dict(), "num_latents", "patch_size") == without(
    toy.tokenizer.model.to_dict(), "num_latents", "patch_size"
  )
  assert without(dyn.to_dict(), "group") == without(toy.dynamics.model.to_dict(), "group")
  assert cx.agent.agent.to_dict() == toy.agent.agent.to_dict()
  # Craftax's goals share the tech tree's prefixes: phase 2 reads every task an episode accomplished;
  # the toy's episodes end at their one goal.
  assert cx.agent.data.relabel_tasks and not toy.agent.data.relabel_tasks
  assert pipeline_config.get_config("craftax_large").agent.data.relabel_tasks
  # Rewards of the task only (Craftax pays every achievement); the toy's reward is its task's already.
  assert cx.agent.data.task_reward and pipeline_config.get_config("craftax_large").agent.data.task_reward
  assert not toy.agent.data.task_reward
  assert without(cx.imagine.imagine.to_dict(), "terminal_reward") == without(
    toy.imagine.imagine.to_dict(), "terminal_reward"
  )
  tasks = pipeline.eval_tasks(cx)
  # Tasks the expert's data are labelled with (a task embedding that saw training data).
  assert tasks is not None and len(tasks) == 6 and set(tasks) <= {s[0] for s in STAGES}
  # Craftax rewards every achievement: imagined episodes must not end at the first reward.
  assert cx.imagine.imagine.terminal_reward == 0 and toy.imagine.imagine.terminal_reward > 0
  assert cx.evaluate.episodes % len(tasks) == 0  # every task gets the same count
  assert cx.evaluate.episodes >= 60  # per agent and seed
  # The evaluation env cuts episodes where the data did, at the data's frame size.
  assert pipeline.eval_env_kwargs(cx, (63, 63, 3)) == {"size": 63, "max_steps": 150}
  assert cx.collect.max_steps == 150
  pipeline.check_config(cx)  # valid as shipped


@pytest.mark.parametrize("variant", ["craftax", "craftax_large"])
def test_craftax_pipeline_stages_are_the_phase_variants(variant):
  """A phase run alone with :craftax (or :craftax_large) gets exactly the pipeline's stage settings."""
  from configs import agent, dynamics, imagine, tokenizer

  cfg = pipeline_config.get_config(variant)
  for stage, module in (("tokenizer", tokenizer), ("dynamics", dynamics), ("agent", agent), ("imagine", imagine)):
    assert cfg[stage].to_dict() == module.get_config(variant).to_dict(), stage
    assert cfg[stage].variant == variant


def test_craftax_large_resolves_for_one_gpu():
  cfg = pipeline_config.get_config("craftax_large")
  assert cfg.collect.env == "craftax" and cfg.collect.frames == 1_000_000 and cfg.collect.max_steps == 2000
  t, d = cfg.tokenizer, cfg.dynamics
  assert (t.model.num_latents, t.model.latent_dim) == tuple(d.data.latent_shape) == (64, 16)
  assert (64 // t.model.patch_size) ** 2 == t.model.num_latents and t.data.frame_shape == (64, 64, 3)
  assert d.model.context < d.data.long_window and d.eval.context_frames + d.eval.horizon <= d.data.long_window
  assert cfg.imagine.imagine.context <= cfg.imagine.data.window and cfg.imagine.imagine.terminal_reward == 0
  for stage in ("tokenizer", "dynamics", "agent", "imagine"):
    assert cfg[stage].mesh.preset == "single" and cfg[stage].mesh.num_devices == 1, stage
    assert cfg[stage].train.num_steps >= 10_000, stage
  for c in (t, d):
    assert c.model.dtype == "bfloat16" and c.model.remat
  tasks = pipeline.eval_tasks(cfg)
  from data_pipelines.envs.craftax import STAGES

  assert tasks == tuple(s[0] for s in STAGES) and cfg.evaluate.episodes % len(tasks) == 0
  assert pipeline.eval_env_kwargs(cfg, (64, 64, 3)) == {"size": 64, "max_steps": 2000}
  pipeline.check_config(cfg)  # valid as shipped


@pytest.mark.parametrize("module", ["pipeline", "tokenizer", "dynamics", "agent", "imagine"])
def test_unknown_variant_is_one_line(module):
  import importlib

  mod = importlib.import_module(f"configs.{module}")
  with pytest.raises(ValueError) as e:
    mod.get_config("craftax_huge")
  msg = str(e.value)
  assert msg.startswith(f"configs/{module}.py: unknown variant 'craftax_huge'") and "\n" not in msg
  assert "craftax, craftax_large" in msg


def test_collect_frames_is_for_batched_envs_only(tmp_path):
  cfg = pipeline_config.get_config("tiny")
  cfg.collect.frames = 100
  with pytest.raises(ConfigError) as e:
    pipeline.collect_stage(cfg, str(tmp_path / "data"))
  assert str(e.value).startswith("--config.collect.frames applies to craftax only") and "\n" not in str(e.value)
  assert not (tmp_path / "data").exists()
  # A store already holding collect.frames frames is kept as is (the stage is skipped).
  from data_pipelines.episodes import EpisodeStore

  cfg.collect.frames, cfg.collect.episodes, cfg.collect.max_steps = 0, 2, 3
  pipeline.collect_stage(cfg, str(tmp_path / "data"))
  have = EpisodeStore.open(str(tmp_path / "data")).num_frames
  cfg.collect.env, cfg.collect.layout, cfg.collect.frames = "craftax", "", have
  pipeline.collect_stage(cfg, str(tmp_path / "data"))
  assert EpisodeStore.open(str(tmp_path / "data")).num_frames == have


def test_toy_evaluation_env_follows_the_collected_layout():
  toy = pipeline_config.get_config("toy")
  assert pipeline.eval_env_kwargs(toy, (64, 64, 3)) == {"size": 64, "max_steps": 64, "layout": "fixed"}
  assert pipeline.eval_tasks(toy) is None  # all of the env's tasks
  toy.evaluate.tasks = " reach_blue , reach_red "
  assert pipeline.eval_tasks(toy) == ("reach_blue", "reach_red")
  pipeline.check_config(toy)


@pytest.mark.parametrize(
  "key,value,expect",
  [
    ("evaluate.tasks", "collect_wood,fly", "--config.evaluate.tasks: unknown task(s) fly for env 'craftax'"),
    ("collect.env", "atari", "--config.collect.env: unknown env 'atari'"),
  ],
)
def test_bad_pipeline_settings_fail_before_any_stage(key, value, expect):
  cfg = pipeline_config.get_config("craftax")
  section, name = key.split(".")
  cfg[section][name] = value
  with pytest.raises(ConfigError) as e:
    pipeline.check_config(cfg)
  assert str(e.value).startswith(expect)
  assert "\n" not in str(e.value)


def test_collect_stage_hands_over_max_steps_and_names_bad_settings(tmp_path):
  """The collect stage cuts episodes at collect.max_steps; bad collect settings are one ConfigError
  line naming --config.collect.<key>, with nothing written."""
  from data_pipelines.episodes import EpisodeStore

  cfg = pipeline_config.get_config("tiny")
  cfg.collect.episodes, cfg.collect.max_steps, cfg.collect.skills = 4, 3, "0.0"
  pipeline.collect_stage(cfg, str(tmp_path / "data"))
  store = EpisodeStore.open(str(tmp_path / "data"))
  assert store.num_episodes == 4 and (store.episode_lengths <= 3 + 1).all() and store.episode_lengths.max() == 4
  for key, value, expect in (
    ("layout", "diagonal", "--config.collect.layout: "),
    ("max_steps", 0, "--config.collect.max_steps: must be >= 1"),
    ("skills", "high", "--config.collect.skills=high: give comma-separated numbers"),
  ):
    bad = pipeline_config.get_config("tiny")
    bad.collect[key] = value
    with pytest.raises(ConfigError) as e:
      pipeline.collect_stage(bad, str(tmp_path / key))
    assert str(e.value).startswith(expect) and "\n" not in str(e.value)
    assert not (tmp_path / key).exists()


def test_seeded_stages_run_seed_by_seed():
  """Agent and imagine alternate per seed, so each finished seed is a whole Dreamer 4 result."""
  stages = ("collect", "tokenizer", "encode", "dynamics", "agent", "imagine", "evaluate")
  assert pipeline.stage_plan(stages, 3) == [
    ("collect", 0),
    ("tokenizer", 0),
    ("encode", 0),
    ("dynamics", 0),
    ("agent", 0),
    ("imagine", 0),
    ("agent", 1),
    ("imagine", 1),
    ("agent", 2),
    ("imagine", 2),
    ("evaluate", 0),
  ]
  assert pipeline.stage_plan(("imagine",), 2) == [("imagine", 0), ("imagine", 1)]
  assert pipeline.stage_plan(("dynamics", "agent"), 1) == [("dynamics", 0), ("agent", 0)]


def test_unknown_stage_fails_before_any_stage_runs(tmp_path):
  cfg = pipeline_config.get_config("toy")
  cfg.stages = ("agent", "imagin")
  with pytest.raises(ConfigError, match="imagin"):
    pipeline.run_pipeline(cfg, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()
