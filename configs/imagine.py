r"""Phase 3: imagination training with PMPO inside the frozen world model (Dreamer 4 paper, §6).

  python -m dreamer4.main --config=configs/imagine.py:toy --workdir=runs/toy/imagine \
      --config.data.path=runs/toy/data --config.agent_workdir=runs/toy/agent

Only the policy (from the BC policy) and a new value head train. Variants: toy, tiny.
"""

from __future__ import annotations

import ml_collections

from configs import common
from configs import tokenizer as tokenizer_config

VARIANTS = ("toy", "tiny")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = arg or "toy"
  if variant not in VARIANTS:
    raise ValueError(f"configs/imagine.py: unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")
  c = ml_collections.ConfigDict()
  c.phase = "imagine"
  c.variant = variant
  c.agent_workdir = ""       # finished phase-2 workdir
  c.data = tokenizer_config.data_config(window=4)  # dataset windows that start imagined rollouts

  c.imagine = ml_collections.ConfigDict()
  c.imagine.context = 4      # dataset frames that prime each rollout
  c.imagine.horizon = 16     # imagined steps per rollout (paper: unstated for Minecraft)
  c.imagine.k = 4            # shortcut steps per generated frame [P §6: K = 4]
  c.imagine.context_noise = 0.1
  c.imagine.gamma = 0.997    # [P §6.3]
  c.imagine.lam = 0.95       # lambda (paper: unstated; Dreamer 3's)
  c.imagine.alpha = 0.5      # PMPO positive/negative balance [P Eq 11]
  c.imagine.beta = 0.3       # PMPO reverse-KL weight to the BC prior [P Eq 11]
  c.imagine.terminal_reward = 0.5  # predicted reward >= this ends the imagined episode (our choice; 0: never)
  c.imagine.normalize_policy_loss = False  # PMPO / its RMS: on a tiny run it clipped 19/20 steps (x0.08 at step 0) and cut value steps 11% [App. F: none]

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
  return c
