"""dreamer4/host_memory.py: the glibc huge-page tunable and the entry points' re-exec."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from dreamer4 import host_memory as hm

_GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
needs_glibc = pytest.mark.skipif(not _GLIBC, reason="the tunable is glibc's (Linux)")


@needs_glibc
def test_with_hugepages_appends_the_tunable():
  assert hm.with_hugepages({})["GLIBC_TUNABLES"] == hm.TUNABLE == "glibc.malloc.hugetlb=1"
  env = {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2", "OTHER": "x"}
  out = hm.with_hugepages(env)
  assert out == {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1", "OTHER": "x"}
  assert env == {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2", "OTHER": "x"}  # a copy: the input is untouched
  assert hm.with_hugepages({hm.OPT_OUT: "1"})["GLIBC_TUNABLES"] == hm.TUNABLE  # only "0" opts out


def test_with_hugepages_none_when_opted_out_or_set():
  assert hm.with_hugepages({hm.OPT_OUT: "0"}) is None
  assert hm.with_hugepages({hm.OPT_OUT: "0", "GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}) is None
  assert hm.with_hugepages({"GLIBC_TUNABLES": hm.TUNABLE}) is None  # already re-executed: no loop
  # A user's own hugetlb setting (e.g. 0, or 2 for hugetlbfs pages) is left as it is.
  assert hm.with_hugepages({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}) is None
  assert hm.with_hugepages({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=2"}) is None


_CHILD = """
import os, sys
print("start", flush=True)
from dreamer4.host_memory import reexec_with_hugepages
reexec_with_hugepages()
print("run", os.getpid(), os.environ.get("GLIBC_TUNABLES", ""), " ".join(sys.argv[1:]), flush=True)
"""


def _child(env_extra: dict[str, str]) -> tuple[int, list[str]]:
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", hm.OPT_OUT)}
  env.update(env_extra, PYTHONPATH=root)
  proc = subprocess.Popen(
    [sys.executable, "-c", _CHILD, "a", "b c"], env=env, cwd=root, stdout=subprocess.PIPE, text=True
  )
  out, _ = proc.communicate(timeout=60)
  assert proc.returncode == 0
  return proc.pid, out.splitlines()


@needs_glibc
def test_reexec_child_sees_the_tunable_once():
  pid, lines = _child({})
  # The prelude runs twice (before and after the exec), the rest once, in the same
  # process (same PID) with the same arguments and the tunable in its environment.
  assert lines == ["start", "start", f"run {pid} {hm.TUNABLE} a b c"]
  pid, lines = _child({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"})
  assert lines == ["start", "start", f"run {pid} glibc.malloc.arena_max=2:{hm.TUNABLE} a b c"]


def test_reexec_skipped_when_opted_out_or_set():
  pid, lines = _child({hm.OPT_OUT: "0"})
  assert lines == ["start", f"run {pid}  a b c"]
  pid, lines = _child({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"})
  assert lines == ["start", f"run {pid} glibc.malloc.hugetlb=0 a b c"]


def test_ab_benchmark_workers_start_without_the_tunable(monkeypatch):
  """benchmarks/train_step_ab.py starts both trees' workers from a plain environment; only a
  tree with dreamer4/host_memory.py adds the tunable, by re-executing as its trainer does."""
  from benchmarks import train_step_ab

  monkeypatch.setenv("GLIBC_TUNABLES", f"glibc.malloc.arena_max=2:{hm.TUNABLE}")
  assert train_step_ab.entry_env()["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2"
  monkeypatch.setenv("GLIBC_TUNABLES", hm.TUNABLE)
  assert "GLIBC_TUNABLES" not in train_step_ab.entry_env()
