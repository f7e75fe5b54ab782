r"""Collect episodes of a scripted behaviour policy into an EpisodeStore.

  python -m data_pipelines.collect --env=toy --episodes=200 --output=/tmp/toy_data \
      [--seed=0] [--skills=0.9,0.5,0.0] [--size=64] [--max_steps=64] [--layout=random] [--append]
  python -m data_pipelines.collect --env=craftax --output=runs/craftax/data \
      [--frames=1000000] [--episodes=N] [--num_envs=64] [--max_steps=2000]

Each episode draws its policy skill uniformly from --skills, so one dataset mixes
expert, mediocre and random play (the agent phase learns from all of it, and the
random part shows the world model what every action does).

Craftax (see data_pipelines/envs/craftax.py) is collected in JAX, `--num_envs`
episodes at a time. Its size is set in frames: collection stops starting new
episodes once --frames (default 1,000,000) frames are collected or under way,
and lets the running ones finish, so a store holds slightly more. --episodes,
if given, caps the episode count as well. Episodes last up to --max_steps steps
(default 2000; the expert mostly dies earlier). Stores also get a per-frame
array `achievement_unlocks` [N, 22] uint8 (1 where an achievement was unlocked).

Bad input stops before anything is written: one line on stderr starting with
"error:" and exit code 2.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Sequence

import numpy as np

from data_pipelines.envs import ENVS, make_env
from data_pipelines.envs.toy import ScriptedPolicy


# Episodes are committed in groups of about one shard of frames: each commit
# rewrites the partly filled shard, so committing per episode is several times
# slower. A crash loses at most the uncommitted group.
COMMIT_FRAMES = 1024
# Envs whose collection is batched in JAX rather than stepped one episode at a time.
BATCHED_ENVS = ("craftax",)
DEFAULT_EPISODES = 100  # toy (and per-episode envs) when --episodes is not given
DEFAULT_FRAMES = 1_000_000  # craftax when neither --episodes nor --frames is given
DEFAULT_MAX_STEPS = {"toy": 64, "craftax": 2000}


class CollectError(ValueError):
  """Bad collect input; the message names the flag and the fix."""


def _is_local(output: str) -> bool:
  return "://" not in output or output.startswith("file://")


def _local_path(output: str) -> str:
  return output[len("file://"):] if output.startswith("file://") else output


def _check_writable(output: str):
  """Fails early, before creating anything, when a local output cannot be written."""
  if not _is_local(output):
    return
  path = os.path.abspath(_local_path(output))
  if os.path.exists(path) and not os.path.isdir(path):
    raise CollectError(f"--output: {output} is a file, not a directory; choose another path")
  probe = path
  while not os.path.exists(probe):
    probe = os.path.dirname(probe)
  if not os.path.isdir(probe) or not os.access(probe, os.W_OK | os.X_OK):
    raise CollectError(f"--output: cannot write under {probe} (permission denied); choose a writable path")


def _episode_seeds(seed: int, episode: int) -> tuple[int, int, float]:
  """(env seed, policy seed, skill draw in [0, 1)) of one episode, from (seed, episode) only,
  so --append continues a dataset without repeating episodes."""
  rng = np.random.default_rng([seed, episode])
  env_seed, policy_seed = (int(x) for x in rng.integers(0, 2**31 - 1, size=2))
  return env_seed, policy_seed, float(rng.random())


def collect(env_name: str, output: str, episodes: int | None, seed: int = 0,
            skills: Sequence[float] = (0.9, 0.5, 0.0), size: int = 64, append: bool = False,
            max_steps: int = 64, frames: int | None = None, num_envs: int = 64, chunk: int = 64,
            log: Any = None, layout: str | None = None) -> dict[str, Any]:
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
    max_steps: steps after which an episode is truncated.
    frames: batched envs only: stop starting episodes once this many frames are collected
      or under way (None: DEFAULT_FRAMES when `episodes` is None too).
    layout: toy only: "random" or "fixed" goal cells (see data_pipelines/envs/toy.py);
      None keeps the env's default.
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
    raise CollectError(f"--env: unknown env {env_name!r}; choose one of {', '.join(sorted(ENVS))}")
  batched = env_name in BATCHED_ENVS
  if episodes is None and not batched:
    episodes = DEFAULT_EPISODES
  if episodes is not None and episodes < 1:
    raise CollectError(f"--episodes: must be >= 1, got {episodes}")
  if frames is not None and frames < 1:
    raise CollectError(f"--frames: must be >= 1, got {frames}")
  if batched and episodes is None and frames is None:
    frames = DEFAULT_FRAMES
  if num_envs < 1:
    raise CollectError(f"--num_envs: must be >= 1, got {num_envs}")
  skills = tuple(float(s) for s in skills)
  if not skills or any(not 0.0 <= s <= 1.0 for s in skills):
    raise CollectError(f"--skills: give a comma-separated list of values in [0, 1], got {list(skills)}")
  if max_steps < 1:
    raise CollectError(f"--max_steps: must be >= 1, got {max_steps}")
  env_kwargs: dict[str, Any] = dict(size=size, max_steps=max_steps)
  if layout is not None:
    if env_name != "toy":
      raise CollectError(f"--layout: only the toy env has layouts; drop --layout for --env={env_name}")
    env_kwargs["layout"] = layout
  try:
    env = make_env(env_name, **env_kwargs)
  except ValueError as e:
    raise CollectError(f"{'--layout' if 'layout' in str(e) else '--size'}: {e}") from None
  _check_writable(output)

  if append:
    try:
      store = EpisodeStore.open(output, "a")
    except StoreError as e:
      raise CollectError(f"--append: {e}") from None
    if store.metadata["env"] != env.name or store.frame_shape != tuple(env.frame_shape) or \
        store.action_spec != env.action_spec:
      raise CollectError(f"--append: {output} holds env {store.metadata['env']!r} with frames "
                         f"{store.frame_shape}; collect with matching --env/--size or a new --output")
  else:
    try:
      store = EpisodeStore.create(output, env=env.name, frame_shape=env.frame_shape, action_spec=env.action_spec,
                                  task_names=env.task_names, fps=env.fps, created_by="data_pipelines.collect")
    except StoreError as e:
      raise CollectError(f"--output: {e}") from None

  if batched:
    return _collect_batched(env, store, output, episodes, frames, seed, skills, num_envs, chunk, log)

  first = store.num_episodes
  null_discrete, _ = env.action_spec.null_action()
  returns, successes, frames_total = [], [], 0
  pending, pending_frames = [], 0
  t0 = time.perf_counter()
  for k in range(first, first + episodes):
    env_seed, policy_seed, u = _episode_seeds(seed, k)
    policy = ScriptedPolicy(skills[int(u * len(skills))], policy_seed)
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
    pending.append(dict(frames_THWC=np.stack(frames), actions_discrete_TA=np.stack(actions).astype(np.int32),
                        rewards_T=np.asarray(rewards, np.float32), tasks_T=np.full((t,), task, np.int32),
                        action_labelled_T=np.arange(t) > 0))  # the first frame holds the null action
    pending_frames += t
    if pending_frames >= COMMIT_FRAMES:
      store.append_many(pending)
      pending, pending_frames = [], 0
    returns.append(float(np.sum(rewards)))
    successes.append(bool(info.get("success", False)))
    frames_total += t
  store.append_many(pending)
  seconds = time.perf_counter() - t0
  return {
      "output": output,
      "episodes": episodes,
      "frames": frames_total,
      "seconds": round(seconds, 3),
      "frames_per_second": round(frames_total / max(seconds, 1e-9), 1),
      "mean_return": float(np.mean(returns)),
      "success_rate": float(np.mean(successes)),
      "total_episodes": store.num_episodes,
  }


UNLOCKS = "achievement_unlocks"


def _collect_batched(env, store, output, episodes, frames, seed, skills, num_envs, chunk, log) -> dict[str, Any]:
  """Craftax: the JAX-batched collector, appending finished episodes in groups of about COMMIT_FRAMES."""
  from data_pipelines.envs import craftax  # pylint: disable=g-import-not-at-top

  if UNLOCKS not in store.array_names:
    if store.num_episodes:
      raise CollectError(f"--append: {output} has no {UNLOCKS!r} array; collect into a new --output")
    store.add_array(UNLOCKS, (len(craftax.ACHIEVEMENT_NAMES),), np.uint8,
                    attrs={"names": list(craftax.ACHIEVEMENT_NAMES)})
  first = store.num_episodes
  goal_probs = craftax.default_goal_probs()

  def episode_params(k):
    env_seed, policy_seed, u = _episode_seeds(seed, first + k)
    goal = int(np.random.default_rng(policy_seed).choice(len(goal_probs), p=goal_probs))
    return env_seed, skills[int(u * len(skills))], goal

  pending, pending_frames = [], 0

  def sink(batch):
    nonlocal pending, pending_frames
    pending.extend(batch)
    pending_frames += sum(ep["frames_THWC"].shape[0] for ep in batch)
    if pending_frames >= COMMIT_FRAMES:
      store.append_many(pending)
      pending, pending_frames = [], 0

  out = craftax.collect_batched(episode_params, size=env.size, max_steps=env.max_steps, num_envs=num_envs,
                                chunk=chunk, max_episodes=episodes, max_frames=frames, sink=sink, log=log)
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


def _define_flags():
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string("env", "toy", "Environment name (registered in data_pipelines.envs).")
  flags.DEFINE_integer("episodes", None, f"Number of episodes to collect (toy default {DEFAULT_EPISODES}; "
                       "craftax: no cap unless given).")
  flags.DEFINE_integer("frames", None, f"Craftax: stop starting episodes after this many frames "
                       f"(default {DEFAULT_FRAMES:,} when --episodes is not given).")
  flags.DEFINE_integer("num_envs", 64, "Craftax: episodes stepped together in JAX.")
  flags.DEFINE_string("output", None, "Store location: a directory or a TensorStore kvstore URL.")
  flags.DEFINE_integer("seed", 0, "Base seed; episode k uses seeds derived from (seed, k).")
  flags.DEFINE_list("skills", ["0.9", "0.5", "0.0"], "Policy skills to mix (each in [0, 1]).")
  flags.DEFINE_integer("size", 64, "Frame height and width in pixels.")
  flags.DEFINE_integer("max_steps", None, f"Steps after which an episode is truncated (default {DEFAULT_MAX_STEPS}).")
  flags.DEFINE_bool("append", False, "Append to an existing store instead of creating a new one.")
  flags.DEFINE_string("layout", None, "Toy only: goal cells, 'random' (default) or 'fixed'.")


def main(argv):
  from absl import flags  # pylint: disable=g-import-not-at-top
  if len(argv) > 1:
    print(f"error: unexpected arguments {argv[1:]}; pass options as --flag=value", file=sys.stderr)
    sys.exit(2)
  f = flags.FLAGS
  try:
    if not f.output:
      raise CollectError("--output: required; give a directory or kvstore URL for the dataset")
    try:
      skills = [float(s) for s in f.skills]
    except ValueError:
      raise CollectError(f"--skills: give comma-separated numbers in [0, 1], got {','.join(f.skills)}") from None
    max_steps = f.max_steps if f.max_steps is not None else DEFAULT_MAX_STEPS.get(f.env, 64)
    log = (lambda m: print(m, file=sys.stderr, flush=True)) if f.env in BATCHED_ENVS else None
    summary = collect(f.env, f.output, f.episodes, f.seed, skills, f.size, f.append, max_steps,
                      frames=f.frames, num_envs=f.num_envs, log=log, layout=f.layout)
  except CollectError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  print(f"collected {summary['episodes']} episodes, {summary['frames']} frames in {summary['seconds']:.1f}s "
        f"({summary['frames_per_second']:.0f} frames/s), mean return {summary['mean_return']:.3f}, "
        f"success rate {summary['success_rate']:.3f}; {summary['output']} now holds "
        f"{summary['total_episodes']} episodes")


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
