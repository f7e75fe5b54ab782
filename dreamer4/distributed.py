"""Multi-controller start-up: `jax.distributed.initialize` only when a cluster is there.

Called first thing inside `main` (never at import: Grain workers re-import modules).
Recognised, in order:
  - explicit flags/env: --coordinator_address / --num_processes / --process_id
    (env DREAMER4_COORDINATOR, DREAMER4_NUM_PROCESSES, DREAMER4_PROCESS_ID);
  - SLURM (SLURM_JOB_ID with more than one task) and Cloud TPU pods (TPU_WORKER_HOSTNAMES with
    more than one host): jax's own cluster detection, no arguments;
  - otherwise a single process: nothing is initialised.

Failure detection: every process sends heartbeats to the coordination service (on process
0). A process silent for `heartbeat_timeout_s` (main's --heartbeat_timeout, default 60 s)
counts as dead and the service terminates the others (SIGABRT, non-zero exit), so a
killed or hung peer never leaves the job hanging in a collective; a killed process 0 is
noticed by the others at once. Restart every process: the run resumes from the last
checkpoint.
"""

from __future__ import annotations

import logging
import os

import jax


def cluster_kind(coordinator: str | None = None) -> str:
  if coordinator or os.environ.get("DREAMER4_COORDINATOR"):
    return "explicit"
  if int(os.environ.get("SLURM_NTASKS", "1")) > 1 and os.environ.get("SLURM_JOB_ID"):
    return "slurm"
  hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
  if hosts and len(hosts.split(",")) > 1:
    return "tpu"
  return "single"


def initialize(
  coordinator: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
  local_devices: int | None = None,
  heartbeat_timeout_s: int | None = None,
) -> str:
  """Initialises jax.distributed for the detected cluster; returns its kind."""
  kind = cluster_kind(coordinator)
  if local_devices:
    jax.config.update("jax_num_cpu_devices", int(local_devices))
  if kind == "single":
    return kind
  kwargs = {}
  if heartbeat_timeout_s:
    kwargs["heartbeat_timeout_seconds"] = int(heartbeat_timeout_s)
  if kind == "explicit":
    jax.distributed.initialize(
      coordinator_address=coordinator or os.environ["DREAMER4_COORDINATOR"],
      num_processes=int(num_processes or os.environ["DREAMER4_NUM_PROCESSES"]),
      process_id=int(process_id if process_id is not None else os.environ["DREAMER4_PROCESS_ID"]),
      initialization_timeout=300,
      **kwargs,
    )
  else:
    jax.distributed.initialize(**kwargs)
  logging.info(
    "jax.distributed (%s): process %d of %d, %d local / %d global devices",
    kind,
    jax.process_index(),
    jax.process_count(),
    jax.local_device_count(),
    jax.device_count(),
  )
  return kind
