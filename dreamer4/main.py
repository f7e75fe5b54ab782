r"""Entry point for every phase.

  python -m dreamer4.main --config=configs/tokenizer.py:toy --workdir=runs/toy/tokenizer \
      --config.data.path=runs/toy/data

The config file picks the phase (`config.phase`). Bad input (any `UserError`) stops with one
line on stderr ("error: ..."), exit code 2, before anything in the workdir is written;
train.max_nonfinite non-finite steps in a row stop with one line, exit code 3.

  python -m dreamer4.main --dry_run --config=configs/dynamics.py:paper --cpu_devices=8 \
      --config.train.batch_size=8

compiles the phase's train step on the mesh with abstract inputs and prints parameters,
per-device memory and FLOPs (the JSON report is the last line); see dreamer4/dry_run.py.
"""

from __future__ import annotations

import logging
import os
import sys

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "Config file, e.g. configs/tokenizer.py:toy.", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory (or gs:// path) for checkpoints, metrics, config.")
_COORD = flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-process runs).")
_NPROC = flags.DEFINE_integer("num_processes", None, "Number of processes (with --coordinator_address).")
_PID = flags.DEFINE_integer("process_id", None, "This process's index (with --coordinator_address).")
_LOCAL_DEVICES = flags.DEFINE_integer("cpu_devices", None, "Fake CPU devices in this process (testing).")
_HEARTBEAT = flags.DEFINE_integer(
  "heartbeat_timeout",
  int(os.environ.get("DREAMER4_HEARTBEAT_TIMEOUT", "60")),
  "Multi-process runs: seconds without a heartbeat after which a process counts as dead and the "
  "others exit (non-zero) instead of hanging (env DREAMER4_HEARTBEAT_TIMEOUT).",
)
_DRY_RUN = flags.DEFINE_bool(
  "dry_run",
  False,
  "Compile the phase's train step on the mesh with abstract "
  "inputs, print parameters / memory / FLOPs per device, write nothing, exit.",
)
_DRY_RUN_OUTPUT = flags.DEFINE_string("dry_run_output", None, "With --dry_run: also write the report (JSON) here.")


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing that reports a bad flag, config file or override as one line, exit code 2."""
  try:
    return flags.FLAGS(argv)
  except Exception as e:  # noqa: BLE001 -- absl, ml_collections and a config file's get_config raise anything
    print(f"error: {_flag_error_line(e, argv)}", file=sys.stderr)
    sys.exit(2)


def _flag_error_line(e: Exception, argv: list[str]) -> str:
  """One line for an error of flag parsing; the only place that reads absl / ml_collections
  error text (everything after parsing raises a UserError, whose text is already one line)."""
  if isinstance(e, flags.Error):  # e.g. "flag --config.x=abc: invalid literal ..." or a config file's traceback
    lines = [l for l in str(e).strip().splitlines() if l.strip()]
    return lines[0].rstrip(":") + (f": {lines[-1]}" if len(lines) > 1 else "")
  if isinstance(e, (AttributeError, KeyError)):  # an override names a key the config lacks
    # ml_collections nests the KeyError: AttributeError(KeyError("'key'\nDid you mean ...?")).
    while e.args and isinstance(e.args[0], BaseException):
      e = e.args[0]
    key, *hint = [l.strip() for l in str(e.args[0] if e.args else e).splitlines() if l.strip()] or [""]
    key = key.strip("'\"")
    hint = f" ({hint[-1][0].lower()}{hint[-1][1:]})" if hint else ""
    bad = [a.split("=")[0] for a in argv[1:] if a.startswith("--config.") and f".{key}." in a.split("=")[0] + "."]
    return f"{bad[0] if bad else '--config'}: the config has no key {key!r}{hint}; check the spelling against the config file"
  return f"--config: {str(e).strip().splitlines()[-1]}"


class _QuietLibraries(logging.Filter):
  """Keeps Orbax's per-save INFO chatter out of the run log (warnings still show)."""

  def filter(self, record):
    return record.levelno >= logging.WARNING or "orbax" not in record.pathname


def main(argv):
  from absl import logging as absl_logging

  absl_logging.get_absl_handler().addFilter(_QuietLibraries())
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from dreamer4 import distributed
  from dreamer4.errors import UserError

  try:
    if _CONFIG.value is None:
      raise UserError("--config is required, e.g. --config=configs/tokenizer.py:toy")
    if _HEARTBEAT.value < 1:
      raise UserError(f"--heartbeat_timeout={_HEARTBEAT.value} must be at least 1 (seconds)")
    if _DRY_RUN.value:  # the workdir is not needed and never touched
      from dreamer4.dry_run import memory_aware_cpu_scheduler

      memory_aware_cpu_scheduler()  # before the XLA backend starts
    elif not _WORKDIR.value:
      raise UserError("--workdir is required: the directory for checkpoints and metrics")
    distributed.initialize(_COORD.value, _NPROC.value, _PID.value, _LOCAL_DEVICES.value, _HEARTBEAT.value)
    if _DRY_RUN.value:
      _dry_run(_CONFIG.value, _DRY_RUN_OUTPUT.value)
      return
    _run(_CONFIG.value, _WORKDIR.value)
  except UserError as e:  # every user-facing error (data_pipelines/errors.py)
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  except FloatingPointError as e:  # train.max_nonfinite non-finite steps in a row; the last good checkpoint is kept
    print(f"error: {e}", file=sys.stderr)
    sys.exit(3)


def _run(config, workdir: str) -> dict:
  """`config.phase`: "pipeline" runs every stage (dreamer4/pipeline.py), any other name one phase
  of the registry (dreamer4/phases/)."""
  from dreamer4.errors import ConfigError
  from dreamer4.phases import PHASES, run

  if config.phase == "pipeline":
    from dreamer4.pipeline import run_pipeline

    return run_pipeline(config, workdir)
  if config.phase not in PHASES:
    raise ConfigError(f"--config.phase={config.phase!r} is unknown; choose one of {', '.join(PHASES)}, pipeline")
  return run(config, workdir)


def _dry_run(config, output: str | None) -> None:
  import json

  from dreamer4.dry_run import dry_run, format_report

  report = dry_run(config)
  print(format_report(report))
  print(json.dumps(report), flush=True)  # the last line: the report as JSON
  if output:
    with open(output, "w") as f:
      json.dump(report, f, indent=2)


if __name__ == "__main__":
  from dreamer4.host_memory import reexec_with_hugepages

  reexec_with_hugepages()  # XLA:CPU's per-step temporaries on huge pages (dreamer4/host_memory.py)
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  logging.getLogger("absl").setLevel(logging.INFO)
  app.run(main, flags_parser=parse_flags)
