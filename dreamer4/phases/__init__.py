"""The phase registry: `run` runs the phase named by `config.phase`.

Each trained phase plugs into the one trainer (dreamer4/training/trainer.py) through its
module's `make_phase` (the contract: dreamer4/training/phase.py); encode is a job that
writes a frozen tokenizer's latents into the dataset. The pipeline of all phases is no
phase: dreamer4/main.py dispatches it to dreamer4/pipeline.py, which calls `run` per stage.
"""

from __future__ import annotations

PHASES = ("tokenizer", "encode", "dynamics", "agent", "imagine")


def make_phase_factory(name: str):
  if name == "tokenizer":
    from dreamer4.phases.tokenizer import make_phase

    return make_phase
  if name == "dynamics":
    from dreamer4.phases.dynamics import make_phase

    return make_phase
  if name == "agent":
    from dreamer4.phases.agent import make_phase

    return make_phase
  if name == "imagine":
    from dreamer4.phases.imagine import make_phase

    return make_phase
  from dreamer4.errors import ConfigError

  raise ConfigError(f"--config.phase={name!r} is unknown; choose one of {', '.join(PHASES)}")


def run(config, workdir: str) -> dict:
  """Runs the phase named by `config.phase` in `workdir`."""
  if config.phase == "encode":
    from dreamer4.phases.encode import encode_dataset

    return encode_dataset(config, workdir)
  from dreamer4.training.trainer import train_and_evaluate

  return train_and_evaluate(config, workdir, make_phase_factory(config.phase))
