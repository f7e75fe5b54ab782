r"""How predictable a Craftax store's next action is from what a frame shows: the ceiling a
behaviour-cloning head meets before any model is trained.

  python -m dreamer4.evaluation.action_probe --data=runs/craftax/data [--out=probe.json]
      [--eval_fraction=0.1] [--split_seed=0] [--steps=3000] [--seed=0]

Each frame of the store is parsed exactly into its symbolic content (dreamer4/evaluation/
craftax_state.py: the 7x9 block grid, the mob and player sprites, the inventory and intrinsics).
A probe, an MLP with two hidden layers of 512 units, reads the one-hot grid and sprites, the
counts (divided by 9), the episode's task and the action stored on the frame (the one that led
into it) and predicts the next frame's action: the label phase 2's BC accuracy scores (the
action stored on frame t + 1 was taken in the state of frame t). It trains (AdamW, 1e-3,
batches of 512) on the task-relevant episodes of the training split and is scored on those of
the held-out split: `data_pipelines.loader.relevant_episode_ids` and `EpisodeStore.split`, as
the phases use them (data.eval_fraction 0.1, data.split_seed 0 by default). The report gives the
probe's best held-out accuracy over checkpoints every steps / 6 steps, its last training
accuracy, and two trivial predictors on the same held-out labels: the most frequent training
label and repeating the previous action. --until_success keeps only the labels up to the frame
that accomplished each episode's task (phase 2's `loss.bc_until_success`).

The probe sees the exact state, which a world model's latents only approximate, and no history
beyond the previous action: a low score means the behaviour policy acts on what a frame does not
show (random actions, random tie-breaks, a planning window wider than the view), and a BC head
trained on that data will not beat it by much.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from dreamer4.errors import UserError
from dreamer4.evaluation import tool_io

HIDDEN = 512
BATCH = 512
LEARNING_RATE = 1e-3
WEIGHT_DECAY = 1e-4
CHECKPOINTS = 6  # held-out scores taken over training
NUM_TASKS = 22  # Craftax-Classic achievements
NUM_ACTIONS = 17


def episode_features(episode: dict[str, np.ndarray], parse) -> tuple[np.ndarray, np.ndarray]:
  """(features [T-1, D] float32 of frames 0..T-2, labels [T-1] int32: the action stored on frames 1..T-1)."""
  from dreamer4.evaluation import craftax_state as cs  # pylint: disable=g-import-not-at-top

  st = parse(episode["frames"])
  block = np.asarray(st.block_RC)
  num = block.shape[0]
  actions = episode["actions_discrete"][:, 0]
  parts = [
    np.eye(len(cs.BLOCK_NAMES), dtype=np.float32)[block].reshape(num, -1),
    np.eye(len(cs.OVERLAY_NAMES), dtype=np.float32)[np.asarray(st.overlay_RC)].reshape(num, -1),
    np.concatenate([np.asarray(st.inventory_I), np.asarray(st.intrinsics_I)], -1).astype(np.float32) / cs.MAX_COUNT,
    np.eye(NUM_TASKS, dtype=np.float32)[episode["tasks"]],
    np.eye(NUM_ACTIONS, dtype=np.float32)[actions],
  ]
  return np.concatenate(parts, -1)[:-1], actions[1:].astype(np.int32)


def trivial_accuracies(train_labels: np.ndarray, eval_features: np.ndarray, eval_labels: np.ndarray) -> dict[str, Any]:
  """Most frequent training label and repeat-the-previous-action accuracies on the held-out labels."""
  most = int(np.bincount(train_labels, minlength=NUM_ACTIONS).argmax())
  previous = eval_features[:, -NUM_ACTIONS:].argmax(-1)
  return {
    "most_frequent_action": most,
    "most_frequent": float(np.mean(eval_labels == most)),
    "repeat_previous": float(np.mean(eval_labels == previous)),
  }


def train_probe(x_train, y_train, x_eval, y_eval, steps: int, seed: int) -> dict[str, float]:
  """Trains the MLP probe; -> best held-out accuracy over the checkpoints and the last train accuracy."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top

  dims = (x_train.shape[1], HIDDEN, HIDDEN, NUM_ACTIONS)
  keys = jax.random.split(jax.random.PRNGKey(seed), len(dims) - 1)
  params = [(jax.random.normal(k, (a, b)) / np.sqrt(a), jnp.zeros((b,))) for k, a, b in zip(keys, dims[:-1], dims[1:])]

  def logits(p, x):
    for w, b in p[:-1]:
      x = jax.nn.gelu(x @ w + b)
    return x @ p[-1][0] + p[-1][1]

  opt = optax.adamw(LEARNING_RATE, weight_decay=WEIGHT_DECAY)
  state = opt.init(params)

  @jax.jit
  def step(p, s, x, y):
    grad = jax.grad(lambda p: optax.softmax_cross_entropy_with_integer_labels(logits(p, x), y).mean())(p)
    updates, s = opt.update(grad, s, p)
    return optax.apply_updates(p, updates), s

  accuracy = jax.jit(lambda p, x, y: jnp.mean(jnp.argmax(logits(p, x), -1) == y))
  rng = np.random.default_rng(seed)
  best, every = 0.0, max(1, steps // CHECKPOINTS)
  for i in range(1, steps + 1):
    idx = rng.integers(0, len(y_train), BATCH)
    params, state = step(params, state, x_train[idx], y_train[idx])
    if i % every == 0 or i == steps:
      best = max(best, float(accuracy(params, x_eval, y_eval)))
  return {"probe": best, "probe_train": float(accuracy(params, x_train, y_train))}


def action_probe(
  data: str,
  eval_fraction: float = 0.1,
  split_seed: int = 0,
  steps: int = 3000,
  seed: int = 0,
  until_success: bool = False,
):
  """The report (module docstring) of the store at `data`; until_success keeps only the labels up
  to the frame that accomplished each episode's task (as phase 2 with loss.bc_until_success)."""
  import jax  # pylint: disable=g-import-not-at-top

  from data_pipelines.episodes import EpisodeStore  # pylint: disable=g-import-not-at-top
  from data_pipelines.loader import relevant_episode_ids  # pylint: disable=g-import-not-at-top
  from data_pipelines.report import success_frames  # pylint: disable=g-import-not-at-top
  from dreamer4.evaluation import craftax_state as cs  # pylint: disable=g-import-not-at-top

  if not os.path.isdir(data):
    raise UserError(f"--data={data}: no such store; give the folder a collection wrote")
  store = EpisodeStore.open(data)
  if store.metadata.get("env") != "craftax" or not cs.readable(store.frame_shape):
    raise UserError(
      f"--data={data}: a {store.metadata.get('env')} store of {store.frame_shape} frames; the probe reads "
      "Craftax frames (64 px or more)"
    )
  train_ids, eval_ids = store.split(eval_fraction, seed=split_seed)
  relevant = {"train": relevant_episode_ids(store, train_ids), "eval": relevant_episode_ids(store, eval_ids)}
  if not relevant["train"] or not relevant["eval"]:
    raise UserError(f"--data={data}: no task-relevant episodes in the training or held-out split; collect more")
  parse = jax.jit(cs.parse)
  done_at = success_frames(store)
  sets = {}
  for split, ids in relevant.items():
    pairs = []
    for e in ids:
      x, y = episode_features(store.read_episode(e), parse)
      if until_success:  # label j is the action stored on episode frame j + 1
        keep = int(done_at[e] - store.episode_offsets[e])
        x, y = x[:keep], y[:keep]
      pairs.append((x, y))
    sets[split] = (np.concatenate([p[0] for p in pairs]), np.concatenate([p[1] for p in pairs]))
  (x_train, y_train), (x_eval, y_eval) = sets["train"], sets["eval"]
  if not len(y_train) or not len(y_eval):
    raise UserError(f"--data={data}: no action labels in the training or held-out split; collect more")
  report = {
    "data": data,
    "episodes": {"train": len(train_ids), "eval": len(eval_ids)},
    "relevant_episodes": {k: len(v) for k, v in relevant.items()},
    "labels": {"train": int(len(y_train)), "eval": int(len(y_eval))},
    "steps": steps,
    "seed": seed,
    "until_success": until_success,
  }
  report.update(trivial_accuracies(y_train, x_eval, y_eval))
  report.update(train_probe(x_train, y_train, x_eval, y_eval, steps, seed))
  return report


def format_report(report: dict[str, Any]) -> str:
  r = report
  return (
    f"{r['data']}: task-relevant episodes {r['relevant_episodes']['train']}/{r['episodes']['train']} training, "
    f"{r['relevant_episodes']['eval']}/{r['episodes']['eval']} held out ({r['labels']['eval']} labels)\n"
    f"  held-out next-action accuracy: probe {100 * r['probe']:.1f}% (train {100 * r['probe_train']:.1f}%), "
    f"most frequent {100 * r['most_frequent']:.1f}%, repeat previous {100 * r['repeat_previous']:.1f}%"
  )


def main(argv: Sequence[str] | None = None) -> int:
  """The command line (module docstring); returns the exit code."""
  ap = argparse.ArgumentParser(prog="python -m dreamer4.evaluation.action_probe", description=__doc__.split("\n\n")[0])
  ap.add_argument("--data", required=True, help="a Craftax EpisodeStore")
  ap.add_argument("--eval_fraction", type=float, default=0.1, help="held-out share of episodes (data.eval_fraction)")
  ap.add_argument("--split_seed", type=int, default=0, help="seed of the episode split (data.split_seed)")
  ap.add_argument("--steps", type=int, default=3000, help="probe training steps")
  ap.add_argument("--seed", type=int, default=0, help="probe initialisation and batch seed")
  ap.add_argument(
    "--until_success", action="store_true", help="only labels up to each task's accomplishment (loss.bc_until_success)"
  )
  ap.add_argument("--out", default=None, help="the JSON report (default DATA/../action_probe.json)")
  args = ap.parse_args(argv)

  def compute():
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(args.data)), "action_probe.json")
    tool_io.check_out_folder(out)
    if args.steps < 1:
      raise UserError(f"--steps={args.steps}: give a positive number of training steps")
    if not 0 < args.eval_fraction < 1:
      raise UserError(f"--eval_fraction={args.eval_fraction}: give a held-out share between 0 and 1, e.g. 0.1")
    report = action_probe(args.data, args.eval_fraction, args.split_seed, args.steps, args.seed, args.until_success)
    return report, out

  return tool_io.run_tool(compute, format_report, ".action_probe-")


if __name__ == "__main__":
  sys.exit(main())
