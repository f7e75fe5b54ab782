"""Runs the stages of configs/pipeline.py in order inside one workdir.

Layout: WORKDIR/data (EpisodeStore), WORKDIR/<phase> (one workdir per phase); with
config.seeds = S > 1 the agent phases are repeated for seeds 1..S-1 in WORKDIR/seed<s>/<phase>
on the shared world model, seed by seed (agent and imagine of seed 0, then of seed 1, ...), and the evaluation reports mean ± std across seeds. A stage is
skipped when its workdir holds a finished result (run_summary.json at the final step) and
resumes from its checkpoints when it was interrupted.
"""

from __future__ import annotations

import copy
import json
import logging
import os

from etils import epath

from dreamer4.errors import ConfigError
from dreamer4.phases import run

TRAINED_STAGES = ("tokenizer", "dynamics", "agent", "imagine")
SEEDED_STAGES = ("agent", "imagine")  # repeated once per seed (config.seeds); the world model is shared


def stage_dir(workdir: str, stage: str, seed: int = 0) -> str:
  """WORKDIR/<stage> for seed 0 (and every unseeded stage), WORKDIR/seed<s>/<stage> for seed s > 0."""
  if seed == 0 or stage not in SEEDED_STAGES:
    return os.path.join(workdir, stage)
  return os.path.join(workdir, f"seed{seed}", stage)


def stage_finished(stage_dir: str, num_steps: int) -> bool:
  path = epath.Path(stage_dir) / "run_summary.json"
  if not path.exists():
    return False
  summary = json.loads(path.read_text())
  return summary.get("stop_reason") == "finished" and int(summary.get("step", -1)) >= num_steps


def collect_stage(config, data_path: str) -> None:
  from data_pipelines.collect import CollectError, collect
  from data_pipelines.envs import ENVS
  from data_pipelines.episodes import EpisodeStore, StoreError

  have, have_frames = 0, 0
  try:
    store = EpisodeStore.open(data_path)
    have, have_frames = store.num_episodes, store.num_frames
  except StoreError:
    if epath.Path(data_path).exists() and any(epath.Path(data_path).iterdir()):
      raise
  # collect.frames (batched envs only, as data_pipelines.collect --frames) bounds the dataset by
  # frames instead of collect.episodes.
  frames = int(config.collect.frames)
  if frames and not (config.collect.env in ENVS and ENVS[config.collect.env].batched):
    batched = ", ".join(name for name, spec in ENVS.items() if spec.batched)
    raise ConfigError(
      f"--config.collect.frames applies to {batched} only; "
      f"set it to 0 and use --config.collect.episodes for env {config.collect.env!r}"
    )
  if frames and have_frames >= frames:
    logging.info("collect: %s already holds %d frames; skipped", data_path, have_frames)
    return
  if not frames and have >= config.collect.episodes:
    logging.info("collect: %s already holds %d episodes; skipped", data_path, have)
    return
  episodes = None if frames else config.collect.episodes - have
  try:
    skills = tuple(float(s) for s in str(config.collect.skills).split(","))
  except ValueError:
    raise ConfigError(
      f"--config.collect.skills={config.collect.skills}: give comma-separated numbers in [0, 1]"
    ) from None
  try:
    summary = collect(
      config.collect.env,
      data_path,
      episodes,
      config.collect.seed + have,
      skills,
      config.collect.size,
      have > 0,
      max_steps=int(config.collect.max_steps),
      frames=(frames - have_frames) if frames else None,
      layout=config.collect.layout or None,
      goals=_names(config.collect.goals),
    )
  except CollectError as e:  # the same setting under the pipeline's name
    raise ConfigError(f"--config.collect.{e.flag}: {e.detail}") from None
  logging.info("collect: %s", summary)


def eval_env_kwargs(config, frame_shape) -> dict:
  """Constructor arguments of the evaluation env, so it draws frames (and goals) as the data did."""
  from data_pipelines.envs import ENVS

  return ENVS[config.collect.env].env_kwargs(frame_shape[0], config.collect.max_steps, config.collect.layout)


def _names(value) -> tuple[str, ...]:
  """The names of a comma-separated setting (e.g. collect.goals, evaluate.tasks), blanks dropped."""
  return tuple(t.strip() for t in str(value).split(",") if t.strip())


def eval_tasks(config) -> tuple[str, ...] | None:
  """The tasks the evaluation cycles through (None: all of the env's tasks)."""
  return _names(config.evaluate.tasks) or None


def evaluate_stage(config, workdir: str, data_path: str) -> dict:
  """Real-environment table [P Table 7]: random, behaviour data, WM+BC, Dreamer 4.

  Skipped when WORKDIR/evaluate/results.json exists. Rows whose phase is missing are left out.
  """
  from data_pipelines.episodes import EpisodeStore
  from dreamer4.evaluation import env_eval, report
  from dreamer4.evaluation.wm_policy import WorldModelAgent

  out_dir = os.path.join(workdir, "evaluate")
  done = epath.Path(out_dir) / "results.json"
  if done.exists():
    logging.info("evaluate: %s exists; skipped", done)
    return json.loads(done.read_text())
  ev = config.evaluate
  store = EpisodeStore.open(data_path)
  kwargs, tasks = eval_env_kwargs(config, store.frame_shape), eval_tasks(config)
  num_seeds = int(config.seeds)

  def common(s: int) -> dict:
    # Seed s evaluates its own agents on environment seeds ev.seed + s (random play too, so
    # every row of the table sees the same episodes).
    return dict(
      num_episodes=int(ev.episodes),
      seed=int(ev.seed) + s,
      batch_size=int(ev.batch_size),
      env_kwargs=kwargs,
      max_steps=int(ev.max_steps) or None,
      tasks=tasks,
    )

  per_seed: dict[str, list] = {"random": [], "WM+BC": [], "Dreamer 4": []}
  for s in range(num_seeds):
    per_seed["random"].append(
      env_eval.evaluate(config.collect.env, env_eval.RandomPolicy(store.action_spec), **common(s))
    )
    agent_dir, imagine_dir = stage_dir(workdir, "agent", s), stage_dir(workdir, "imagine", s)
    if (epath.Path(agent_dir) / "checkpoints").exists():
      per_seed["WM+BC"].append(
        env_eval.evaluate(config.collect.env, WorldModelAgent(agent_dir, name="WM+BC"), **common(s))
      )
    if (epath.Path(imagine_dir) / "checkpoints").exists():
      per_seed["Dreamer 4"].append(
        env_eval.evaluate(config.collect.env, WorldModelAgent(agent_dir, imagine_dir, name="Dreamer 4"), **common(s))
      )
  # One seed: its row as is; several: mean ± std across seeds. Table order: random, behaviour, agents.
  merge = lambda found: found[0] if len(found) == 1 else report.aggregate_seeds(found)
  rows = {"random": merge(per_seed.pop("random")), "behaviour data": env_eval.behaviour_table(data_path, tasks=tasks)}
  rows.update({name: merge(found) for name, found in per_seed.items() if found})
  report.write_table(rows, out_dir)
  logging.info("evaluate:\n%s", report.to_markdown(rows))
  return json.loads(done.read_text())


def check_config(config) -> None:
  """Settings that would otherwise fail only at the last stage, hours in. Raises ConfigError."""
  from data_pipelines.envs import ENVS, make_env

  env = config.collect.env
  if env not in ENVS:
    raise ConfigError(f"--config.collect.env: unknown env {env!r}; choose one of {', '.join(sorted(ENVS))}")
  tasks = eval_tasks(config)
  if tasks and "evaluate" in config.stages:
    names = make_env(env).task_names
    unknown = [t for t in tasks if t not in names]
    if unknown:
      raise ConfigError(
        f"--config.evaluate.tasks: unknown task(s) {', '.join(unknown)} for env {env!r}; choose from {', '.join(names)}"
      )


def stage_plan(stages, num_seeds: int) -> list[tuple[str, int]]:
  """(stage, seed) in run order. Consecutive seeded stages run seed by seed (agent 0, imagine 0,
  agent 1, ...), so every finished seed is a whole Dreamer 4 result and an interrupted run
  resumes at the seed it was on."""
  plan, block = [], []

  def flush():
    plan.extend((stage, s) for s in range(num_seeds) for stage in block)
    block.clear()

  for stage in stages:
    if stage in SEEDED_STAGES:
      block.append(stage)
      continue
    flush()
    plan.append((stage, 0))
  flush()
  return plan


def run_pipeline(config, workdir: str) -> dict:
  check_config(config)
  data_path = os.path.join(workdir, "data")
  results = {}
  for stage in config.stages:
    if stage not in ("collect", "encode", "evaluate") + tuple(TRAINED_STAGES):
      raise ConfigError(
        f"--config.stages has unknown stage {stage!r}; choose from collect, encode, evaluate, "
        f"{', '.join(TRAINED_STAGES)}"
      )
  for stage, s in stage_plan(config.stages, int(config.seeds)):
    if stage == "collect":
      collect_stage(config, data_path)
      continue
    if stage == "encode":  # skips itself when the store already holds this tokenizer's latents
      cfg = config.encode
      cfg.data.path = cfg.data.path or data_path
      cfg.tokenizer_workdir = cfg.tokenizer_workdir or os.path.join(workdir, "tokenizer")
      results[stage] = run(cfg, os.path.join(workdir, "encode"))
      continue
    if stage == "evaluate":
      results[stage] = {k: v for k, v in evaluate_stage(config, workdir, data_path).items() if k != "rows"}
      continue
    cfg = copy.deepcopy(config[stage])
    if not cfg.data.path:
      cfg.data.path = data_path
    for key, stage_name in (
      ("tokenizer_workdir", "tokenizer"),
      ("dynamics_workdir", "dynamics"),
      ("agent_workdir", "agent"),
    ):
      if key in cfg and not cfg[key]:
        cfg[key] = stage_dir(workdir, stage_name, s)
    if s:  # another seed: other initial heads, step randomness and data order
      cfg.train.seed = int(cfg.train.seed) + s
      cfg.data.seed = int(cfg.data.seed) + s
    name = stage if s == 0 else f"{stage}/seed{s}"
    sdir = stage_dir(workdir, stage, s)
    if stage_finished(sdir, cfg.train.num_steps):
      logging.info("%s: finished result in %s; skipped", name, sdir)
      results[name] = json.loads((epath.Path(sdir) / "run_summary.json").read_text())
      continue
    summary = run(cfg, sdir)
    results[name] = {k: v for k, v in summary.items() if k != "state"}
    if summary["stop_reason"] != "finished":
      break
  results["stop_reason"] = results.get(config.stages[-1], {}).get("stop_reason", "finished")
  return results
