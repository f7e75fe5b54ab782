"""Huge pages for the host allocations of XLA:CPU steps (glibc's `glibc.malloc.hugetlb` tunable).

XLA:CPU allocates an executable's temporary buffer (every activation a train step keeps for
its backward pass, and the backward's own scratch) with one posix_memalign per execution, on
an intra-op thread. glibc serves a request that large with a fresh mmap and unmaps it when
the step ends, so the next step faults every 4 KiB page in again and the kernel zeroes it.
At the toy sizes that is a large share of the step: the tokenizer of
benchmarks/train_step_ab.py (B = 4, T = 16, 32x32 frames, 8+8 layers of width 64) has 1.07 GB
of temporaries, 262,000 page faults and about 0.5 s of kernel time per step, a third of its
CPU time; the dynamics step there has 112 MB and 28,000 faults.

With `glibc.malloc.hugetlb=1` glibc advises those mappings MADV_HUGEPAGE, and where the
kernel's transparent huge pages are in "madvise" or "always" mode
(/sys/kernel/mm/transparent_hugepage/enabled) the same step takes about 1,100 faults of 2 MiB
pages. Nothing else changes: same buffers, same results, the resident size stays the same.
(Keeping the memory mapped instead, with mallopt: one arena, no mmap, a large top pad, also
removed the faults but let the heap fragment: 5 GB resident after 30 steps against 2 GB.)

glibc reads tunables once, when a process starts, so an entry point re-executes itself with
the tunable added (`reexec_with_hugepages`, first thing in dreamer4/main.py and
benchmarks/train_step.py). DREAMER4_HUGEPAGES=0 turns this off.
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Mapping

TUNABLE = "glibc.malloc.hugetlb=1"
OPT_OUT = "DREAMER4_HUGEPAGES"  # "0": leave the allocator alone


def with_hugepages(environ: Mapping[str, str]) -> dict[str, str] | None:
  """A copy of `environ` whose GLIBC_TUNABLES holds `TUNABLE`, or None when there is nothing to
  add: a hugetlb tunable is already set (by us or by the user), the opt-out is set, or the
  process does not run on Linux with glibc."""
  if environ.get(OPT_OUT, "1") == "0" or not sys.platform.startswith("linux"):
    return None
  if platform.libc_ver()[0] != "glibc":
    return None
  current = environ.get("GLIBC_TUNABLES", "")
  if "glibc.malloc.hugetlb=" in current:
    return None
  env = dict(environ)
  env["GLIBC_TUNABLES"] = f"{current}:{TUNABLE}" if current else TUNABLE
  return env


def reexec_with_hugepages() -> None:
  """Replaces this process (same PID, command line and open files) with one started under
  `with_hugepages(os.environ)`; returns at once when that is None, so the new process, which
  has the tunable, goes on. Call it before anything else runs (no threads, no output)."""
  env = with_hugepages(os.environ)
  if env is None:
    return
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, list(sys.orig_argv), env)
