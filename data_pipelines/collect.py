r"""Collect episodes of a scripted behaviour policy into an EpisodeStore.

  python -m data_pipelines.collect --env=toy --episodes=200 --output=/tmp/toy_data \
      [--seed=0] [--skills=0.9,0.5,0.0] [--size=64] [--max_steps=64] [--layout=random] [--append]
  python -m data_pipelines.collect --env=craftax --output=runs/craftax/data \
      [--frames=1000000] [--episodes=N] [--num_envs=64] [--max_steps=2000] [--goals=collect_wood,place_table]

Each episode draws its policy skill uniformly from --skills, so one dataset mixes
expert, mediocre and random play (the agent phase learns from all of it, and the
random part shows the world model what every action does).

How an env is collected is registered in data_pipelines.envs.ENVS: the toy is
stepped one episode at a time with its scripted policy; Craftax (see
data_pipelines/envs/craftax/) is collected in JAX, `--num_envs` episodes at a
time. Its size is set in frames: collection stops starting new episodes once
--frames (default 1,000,000) frames are collected or under way, and lets the
running ones finish, so a store holds slightly more. --episodes,
if given, caps the episode count as well. Episodes last up to --max_steps steps
(default 2000; the expert mostly dies earlier). Each episode's goal (the expert's target stage of
the tech tree, and the episode's task label) is drawn uniformly from --goals, by default half
"collect_diamond" and the rest spread over the earlier stages. Stores also get a per-frame
array `achievement_unlocks` [N, 22] uint8 (1 where an achievement was unlocked).

Bad input stops before anything is written: one line on stderr starting with
"error:" and exit code 2.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from data_pipelines.envs import ENVS, make_env
from data_pipelines.errors import UserError

# Episodes are committed in groups of about one shard of frames: each commit
# rewrites the partly filled shard, so committing per episode is several times
# slower. A crash loses at most the uncommitted group.
COMMIT_FRAMES = 1024
DEFAULT_EPISODES = 100  # per-episode envs (toy) when --episodes is not given
DEFAULT_FRAMES = 1_000_000  # batched envs (craftax) when neither --episodes nor --frames is given


class CollectError(UserError):
  """Bad collect input: `flag` names the setting (e.g. "layout"), `detail` the problem and the fix;
  the message reads "--flag: detail", and a caller with its own flag names (the pipeline's
  --config.collect.*) rebuilds it from the two parts."""

  def __init__(self, flag: str, detail: str):
    super().__init__(f"--{flag}: {detail}")
    self.flag, self.detail = flag, detail


def _is_local(output: str) -> bool:
  return "://" not in output or output.startswith("file://")


def _local_path(output: str) -> str:
  return output[len("file://") :] if output.startswith("file://") else output


def _check_writable(output: str):
  """Fails early, before creating anything, when a local output cannot be written."""
  if not _is_local(output):
    return
  path = os.path.abspath(_local_path(output))
  if os.path.exists(path) and not os.path.isdir(path):
    raise CollectError("output", f"{output} is a file, not a directory; choose another path")
  probe = path
  while not os.path.exists(probe):
    probe = os.path.dirname(probe)
  if not os.path.isdir(probe) or not os.access(probe, os.W_OK | os.X_OK):
    raise CollectError("output", f"cannot write under {probe} (permission denied); choose a writable path")


def _episode_seeds(seed: int, episode: int) -> tuple[int, int, float]:
  """(env seed, policy seed, skill draw in [0, 1)) of one episode, from (seed, episode) only,
  so --append continues a dataset without repeating episodes."""
  rng = np.random.default_rng([seed, episode])
  env_seed, policy_seed = (int(x) for x in rng.integers(0, 2**31 - 1, size=2))
  return env_seed, policy_seed, float(rng.random())


def collect(
  env_name: str,
  output: str,
  episodes: int | None,
  seed: int = 0,
  skills: Sequence[float] = (0.9, 0.5, 0.0),
  size: int = 64,
  append: bool = False,
  max_steps: int | None = None,
  frames: int | None = None,
  num_envs: int = 64,
  chunk: int = 64,
  log: Any = None,
  layout: str | None = None,
  goals: Sequence[str] | None = None,
) -> dict[str, Any]:
  """Runs scripted policies in an env and appends the episodes to a store.

  Args:
    env_name: registered env name (see data_pipelines.envs.ENVS).
    output: store location (directory or kvstore URL).
    episodes: number of episodes to collect (>= 1); for batched envs (craftax) None
      means no episode cap (then `frames` bounds the collection).
    seed: base seed; episode k uses seeds derived from (seed, k).
    skills: policy skills to mix, each in [0, 1]; each episode draws one uniformly.
    size: frame height and width.
    append: append to an existing store instead of creating a new one.
    max_steps: steps after which an episode is truncated (None: the env's EnvSpec.max_steps).
    frames: batched envs only: stop starting episodes once this many frames are collected
      or under way (None: DEFAULT_FRAMES when `episodes` is None too).
    layout: envs with layouts only (toy: "random" or "fixed" goal cells, see
      data_pipelines/envs/toy.py); None keeps the env's default.
    goals: envs with goals only (craftax: tech-tree stages, data_pipelines/envs/craftax STAGES):
      each episode's goal is drawn uniformly from these; None or empty keeps the env's default.
    num_envs: batched envs only: episodes stepped together.
    chunk: batched envs only: steps per jitted call (finished envs restart between calls).
    log: batched envs only: optional progress printer.

  Returns:
    Summary dict: output, episodes, frames, seconds, frames_per_second,
    mean_return, success_rate, total_episodes.

  Raises:
    CollectError: bad input; nothing has been written.
  """
  # Imported here so `--help` and input errors stay instant.
  from data_pipelines.episodes import EpisodeStore, StoreError  # pylint: disable=g-import-not-at-top

  if env_name not in ENVS:
    raise CollectError("env", f"unknown env {env_name!r}; choose one of {', '.join(sorted(ENVS))}")
  spec = ENVS[env_name]
  if episodes is None and not spec.batched:
    episodes = DEFAULT_EPISODES
  if episodes is not None and episodes < 1:
    raise CollectError("episodes", f"must be >= 1, got {episodes}")
  if frames is not None and frames < 1:
    raise CollectError("frames", f"must be >= 1, got {frames}")
  if spec.batched and episodes is None and frames is None:
    frames = DEFAULT_FRAMES
  if num_envs < 1:
    raise CollectError("num_envs", f"must be >= 1, got {num_envs}")
  skills = tuple(float(s) for s in skills)
  if not skills or any(not 0.0 <= s <= 1.0 for s in skills):
    raise CollectError("skills", f"give a comma-separated list of values in [0, 1], got {list(skills)}")
  max_steps = spec.max_steps if max_steps is None else max_steps
  if max_steps < 1:
    raise CollectError("max_steps", f"must be >= 1, got {max_steps}")
  if layout is not None and not spec.layouts:
    raise CollectError(
      "layout", f"only the {_env_names('layouts')} env has layouts; drop --layout for --env={env_name}"
    )
  goals = tuple(goals or ())
  if goals and not spec.goals:
    raise CollectError("goals", f"only the {_env_names('goals')} env has goals; drop --goals for --env={env_name}")
  unknown = [g for g in goals if g not in spec.goals]
  if unknown:
    raise CollectError(
      "goals", f"unknown goal {unknown[0]!r} for --env={env_name}; choose among {', '.join(spec.goals)}"
    )
  try:
    env = make_env(env_name, **spec.env_kwargs(size, max_steps, layout))
  except ValueError as e:
    raise CollectError("layout" if "layout" in str(e) else "size", str(e)) from None
  _check_writable(output)

  if append:
    try:
      store = EpisodeStore.open(output, "a")
    except StoreError as e:
      raise CollectError("append", f"{e}") from None
    if (
      store.metadata["env"] != env.name
      or store.frame_shape != tuple(env.frame_shape)
      or store.action_spec != env.action_spec
    ):
      raise CollectError(
        "append",
        f"{output} holds env {store.metadata['env']!r} with frames "
        f"{store.frame_shape}; collect with matching --env/--size or a new --output",
      )
  else:
    try:
      store = EpisodeStore.create(
        output,
        env=env.name,
        frame_shape=env.frame_shape,
        action_spec=env.action_spec,
        task_names=env.task_names,
        fps=env.fps,
        created_by="data_pipelines.collect",
      )
    except StoreError as e:
      raise CollectError("output", f"{e}") from None
  for name, columns in spec.frame_arrays.items():
    if name not in store.array_names:
      if store.num_episodes:
        raise CollectError("append", f"{output} has no {name!r} array; collect into a new --output")
      store.add_array(name, (len(columns),), np.uint8, attrs={"names": list(columns)})

  first = store.num_episodes
  pending, pending_frames = [], 0

  def episode_seeds(k: int) -> tuple[int, int, float]:
    return _episode_seeds(seed, first + k)

  def sink(batch: list[dict[str, Any]]) -> None:
    """Appends finished episodes in groups of about COMMIT_FRAMES frames."""
    nonlocal pending, pending_frames
    pending.extend(batch)
    pending_frames += sum(ep["frames_THWC"].shape[0] for ep in batch)
    if pending_frames >= COMMIT_FRAMES:
      store.append_many(pending)
      pending, pending_frames = [], 0

  if spec.batched:
    out = spec.collect_batched(
      env,
      episode_seeds,
      skills,
      num_envs=num_envs,
      chunk=chunk,
      max_episodes=episodes,
      max_frames=frames,
      sink=sink,
      log=log,
      **({"goals": goals} if goals else {}),
    )
  else:
    out = _play_episodes(env, spec.behaviour, episode_seeds, skills, episodes, sink)
  store.append_many(pending)
  return {
    "output": output,
    "episodes": out["episodes"],
    "frames": out["frames"],
    "seconds": round(out["seconds"], 3),
    "frames_per_second": round(out["frames_per_second"], 1),
    "mean_return": float(np.mean(out["returns"])),
    "success_rate": float(np.mean(out["successes"])),
    "total_episodes": store.num_episodes,
  }


def _play_episodes(env, behaviour, episode_seeds, skills, episodes, sink) -> dict[str, Any]:
  """Per-episode collection: `episodes` episodes of the env's scripted policy, one at a time, each
  handed to `sink`; returns the summary of EnvSpec.collect_batched (episodes, frames, seconds,
  frames_per_second, returns, successes)."""
  null_discrete, _ = env.action_spec.null_action()
  returns, successes, frames_total = [], [], 0
  t0 = time.perf_counter()
  for k in range(episodes):
    env_seed, policy_seed, u = episode_seeds(k)
    policy = behaviour(skills[int(u * len(skills))], policy_seed)
    frame, task = env.reset(env_seed)
    frames, actions, rewards = [frame], [null_discrete], [0.0]
    done, info = False, {}
    while not done:
      action = policy(env)
      frame, reward, done, info = env.step(action)
      frames.append(frame)
      actions.append(action)
      rewards.append(reward)
    t = len(frames)
    sink(
      [
        dict(
          frames_THWC=np.stack(frames),
          actions_discrete_TA=np.stack(actions).astype(np.int32),
          rewards_T=np.asarray(rewards, np.float32),
          tasks_T=np.full((t,), task, np.int32),
          action_labelled_T=np.arange(t) > 0,
        )
      ]
    )  # the first frame holds the null action
    returns.append(float(np.sum(rewards)))
    successes.append(bool(info.get("success", False)))
    frames_total += t
  seconds = time.perf_counter() - t0
  return {
    "episodes": episodes,
    "frames": frames_total,
    "seconds": seconds,
    "frames_per_second": frames_total / max(seconds, 1e-9),
    "returns": returns,
    "successes": successes,
  }


def _env_names(kind: str) -> str:
  """The registered envs that are batched ("batched"), have layouts ("layouts") or goals ("goals"), e.g. "craftax"."""
  return ", ".join(n for n, spec in ENVS.items() if getattr(spec, kind))


def _define_flags():
  from absl import flags  # pylint: disable=g-import-not-at-top

  flags.DEFINE_string("env", "toy", "Environment name (registered in data_pipelines.envs).")
  batched = _env_names("batched")
  flags.DEFINE_integer(
    "episodes", None, f"Number of episodes to collect (default {DEFAULT_EPISODES}; {batched}: no cap unless given)."
  )
  flags.DEFINE_integer(
    "frames",
    None,
    f"{batched} only: stop starting episodes after this many frames "
    f"(default {DEFAULT_FRAMES:,} when --episodes is not given).",
  )
  flags.DEFINE_integer("num_envs", 64, f"{batched} only: episodes stepped together.")
  flags.DEFINE_string("output", None, "Store location: a directory or a TensorStore kvstore URL.")
  flags.DEFINE_integer("seed", 0, "Base seed; episode k uses seeds derived from (seed, k).")
  flags.DEFINE_list("skills", ["0.9", "0.5", "0.0"], "Policy skills to mix (each in [0, 1]).")
  flags.DEFINE_integer("size", 64, "Frame height and width in pixels.")
  defaults = ", ".join(f"{n} {spec.max_steps}" for n, spec in ENVS.items())
  flags.DEFINE_integer("max_steps", None, f"Steps after which an episode is truncated (default: {defaults}).")
  flags.DEFINE_list(
    "goals",
    [],
    f"{_env_names('goals')} only: goals to draw each episode's goal from, uniformly (default: the env's mix).",
  )
  flags.DEFINE_bool("append", False, "Append to an existing store instead of creating a new one.")
  flags.DEFINE_string(
    "layout", None, f"{_env_names('layouts')} only: the env's layout (toy: goal cells, 'random' (default) or 'fixed')."
  )


def main(argv):
  from absl import flags  # pylint: disable=g-import-not-at-top

  if len(argv) > 1:
    print(f"error: unexpected arguments {argv[1:]}; pass options as --flag=value", file=sys.stderr)
    sys.exit(2)
  f = flags.FLAGS
  try:
    if not f.output:
      raise CollectError("output", "required; give a directory or kvstore URL for the dataset")
    try:
      skills = [float(s) for s in f.skills]
    except ValueError:
      raise CollectError("skills", f"give comma-separated numbers in [0, 1], got {','.join(f.skills)}") from None
    log = lambda m: print(m, file=sys.stderr, flush=True)  # batched collectors report progress
    summary = collect(
      f.env,
      f.output,
      f.episodes,
      f.seed,
      skills,
      f.size,
      f.append,
      f.max_steps,
      frames=f.frames,
      num_envs=f.num_envs,
      log=log,
      layout=f.layout,
      goals=f.goals,
    )
  except CollectError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  print(
    f"collected {summary['episodes']} episodes, {summary['frames']} frames in {summary['seconds']:.1f}s "
    f"({summary['frames_per_second']:.0f} frames/s), mean return {summary['mean_return']:.3f}, "
    f"success rate {summary['success_rate']:.3f}; {summary['output']} now holds "
    f"{summary['total_episodes']} episodes"
  )


def _parse_flags(argv):
  """absl flag parsing with a bad flag reported as one 'error:' line and exit code 2."""
  from absl import flags  # pylint: disable=g-import-not-at-top

  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  from absl import app  # pylint: disable=g-import-not-at-top

  _define_flags()
  app.run(main, flags_parser=_parse_flags)
