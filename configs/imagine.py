r"""Phase 3: imagination training with PMPO inside the frozen world model [P §3.3].

  python -m dreamer4.main --config=configs/imagine.py:toy --workdir=runs/toy/imagine \
      --config.data.path=runs/toy/data --config.agent_workdir=runs/toy/agent

Only the policy (from the BC policy) and a new value head train. Variants: toy, tiny, craftax
(Craftax-Classic at a 2-core CPU budget: the toy settings, 150 steps; the imagine stage of
configs/pipeline.py:craftax), craftax_large (Craftax-Classic on one 80 GB GPU, after
agent.py:craftax_large).
"""

from __future__ import annotations

import ml_collections

from configs import common
from configs import tokenizer as tokenizer_config

VARIANTS = ("toy", "tiny", "craftax", "craftax_large")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = arg or "toy"
  if variant not in VARIANTS:
    raise ValueError(f"configs/imagine.py: unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")
  c = ml_collections.ConfigDict()
  c.phase = "imagine"
  c.variant = variant
  c.agent_workdir = ""  # finished phase-2 workdir
  c.data = tokenizer_config.data_config(
    window=4
  )  # dataset windows ending at each start state (pad="start"); the last imagine.context frames prime a rollout

  c.imagine = ml_collections.ConfigDict()
  c.imagine.context = 4  # dataset frames that prime each rollout
  c.imagine.horizon = 16  # imagined steps per rollout (paper: unstated for Minecraft)
  c.imagine.k = 4  # shortcut steps per generated frame [P §3.2: K = 4]
  c.imagine.context_noise = 0.1
  c.imagine.gamma = 0.997  # [P Eq 10]
  c.imagine.lam = 0.95  # lambda (paper: unstated; Dreamer 3's)
  c.imagine.alpha = 0.5  # PMPO positive/negative balance [P Eq 11]
  c.imagine.beta = 0.3  # PMPO reverse-KL weight to the BC prior [P Eq 11]
  c.imagine.terminal_reward = 0.5  # predicted reward >= this ends the imagined episode (our choice; 0: never)
  c.imagine.normalize_policy_loss = False  # PMPO / its RMS: on a tiny run it clipped 19/20 steps (x0.08 at step 0) and cut value steps 11% [P App. F: none]

  c.loss = ml_collections.ConfigDict()
  c.loss.rms_decay = 0.99

  c.optim = common.optim_config(lr=3e-4, warmup_steps=20)
  c.mesh = common.mesh_config("data")
  c.train = common.train_config(batch_size=16, num_steps=300, eval_every=150, summary_every=0)
  c.eval = ml_collections.ConfigDict()
  c.eval.num_batches = 1

  if variant == "tiny":
    c.data.window = 2
    c.imagine.context = 2
    c.imagine.horizon = 3
    c.imagine.k = 2
    c.train.batch_size = 8
    c.train.num_steps = 4
    c.train.log_every = 2
    c.train.eval_every = 0
    c.train.checkpoint_every = 2
    c.optim.warmup_steps = 1
    c.eval.num_batches = 1
  if variant in ("craftax", "craftax_large"):
    # Craftax pays +1 for every achievement, whatever the task, and ends episodes only on death
    # or at max_steps: an imagined rollout must not end at its first reward.
    c.imagine.terminal_reward = 0.0
  if variant == "craftax":
    # The toy settings with a step budget a 2-core CPU affords (our choice): the imagine stage of
    # configs/pipeline.py:craftax.
    c.train.num_steps = 150  # about 2.5 minutes on 2 cores
    c.train.eval_every = 75  # one evaluation halfway, one at the end
  if variant == "craftax_large":
    # One GPU, on agent.py:craftax_large. Steps and batch are our choices and placeholders until measured.
    c.data.window = 8  # = imagine.context
    c.imagine.context = 8  # dataset frames that prime each rollout
    c.imagine.horizon = 32  # imagined steps: a crafting chain takes tens of steps (paper: unstated)
    c.mesh = common.mesh_config("single")  # one GPU
    c.mesh.num_devices = 1  # the first device only
    c.train.batch_size = 32  # imagined rollouts per step (placeholder)
    c.train.num_steps = 10_000  # placeholder
    c.train.eval_every = 1000  # 10 evaluations per run
    c.train.checkpoint_every = 1000  # lose at most 1000 steps to an interruption
    c.train.log_every = 100  # scalar metrics
    c.optim = common.optim_config(lr=3e-4, warmup_steps=200)  # the toy's peak lr, longer warm-up
    c.eval.num_batches = 4  # held-out batches of rollouts per evaluation
  return c
