"""The pipeline's variants and the settings it hands to the evaluation (no training here)."""

import pytest

from configs import pipeline as pipeline_config
from dreamer4 import pipeline
from dreamer4.errors import ConfigError


def test_craftax_variant_trains_the_toy_models_and_evaluates_reachable_achievements():
  from data_pipelines.envs.craftax import ACHIEVEMENT_NAMES
  toy, cx = pipeline_config.get_config("toy"), pipeline_config.get_config("craftax")
  assert cx.collect.env == "craftax" and cx.seeds == 1
  # Same model shapes as the toy (both worlds are 64x64x3); only the step budgets differ.
  for stage, key in (("tokenizer", "model"), ("dynamics", "model"), ("agent", "agent"), ("imagine", "imagine")):
    assert cx[stage][key].to_dict() == toy[stage][key].to_dict(), stage
  assert cx.tokenizer.train.num_steps < toy.tokenizer.train.num_steps
  assert cx.dynamics.train.num_steps < toy.dynamics.train.num_steps
  tasks = pipeline.eval_tasks(cx)
  assert tasks is not None and len(tasks) == 6 and set(tasks) <= set(ACHIEVEMENT_NAMES)
  assert cx.evaluate.episodes % len(tasks) == 0  # every task gets the same count
  # The evaluation env cuts episodes where the data did, at the data's frame size.
  assert pipeline.eval_env_kwargs(cx, (64, 64, 3)) == {"size": 64, "max_steps": 150}
  assert cx.collect.max_steps == 150
  pipeline.check_config(cx)  # valid as shipped


def test_toy_evaluation_env_follows_the_collected_layout():
  toy = pipeline_config.get_config("toy")
  assert pipeline.eval_env_kwargs(toy, (64, 64, 3)) == {"size": 64, "layout": "fixed"}
  assert pipeline.eval_tasks(toy) is None  # all of the env's tasks
  toy.evaluate.tasks = " reach_blue , reach_red "
  assert pipeline.eval_tasks(toy) == ("reach_blue", "reach_red")
  pipeline.check_config(toy)


@pytest.mark.parametrize("key,value,expect", [
    ("evaluate.tasks", "collect_wood,fly", "--config.evaluate.tasks: unknown task(s) fly for env 'craftax'"),
    ("collect.env", "atari", "--config.collect.env: unknown env 'atari'"),
])
def test_bad_pipeline_settings_fail_before_any_stage(key, value, expect):
  cfg = pipeline_config.get_config("craftax")
  section, name = key.split(".")
  cfg[section][name] = value
  with pytest.raises(ConfigError) as e:
    pipeline.check_config(cfg)
  assert str(e.value).startswith(expect)
  assert "\n" not in str(e.value)
