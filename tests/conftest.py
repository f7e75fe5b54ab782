"""Test-session setup: 8 fake CPU devices and parsed absl flags (grain reads flags)."""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Bytecode for every module the session and its subprocesses import, kept between sessions in the
# checkout's .cache/pycache (git-ignored; nothing is written beside the sources). Without it (the
# .venv holds no .pyc, and PYTHONDONTWRITEBYTECODE=1 is common in containers) every Python process
# compiles jax, flax, orbax, grain ... from source: about 3.2 s of CPU to import a training run
# instead of 1.1 s, and TensorFlow 9 s instead of 3.5 s, in each of the processes the suite starts
# (the xdist workers, and the many `python -m dreamer4.main` of the CLI, crash, resume and
# multi-process tests). Set in the environment too, before the workers and subprocesses start.
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
os.environ.setdefault("PYTHONPYCACHEPREFIX", os.path.join(ROOT, ".cache", "pycache"))
sys.dont_write_bytecode = False
sys.pycache_prefix = os.environ["PYTHONPYCACHEPREFIX"]

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# A persistent compilation cache in the checkout (.cache/, git-ignored), kept between sessions:
# many tests compile the same steps (resume, pipeline, the subprocesses of the CLI and
# multi-process tests), and a later session finds its compiles there. Set as environment
# variables before jax is imported so that every subprocess of the session shares it; the key
# holds the program, the jax and jaxlib versions, the XLA flags and the devices, so a stale
# entry is never used. Every compile is kept, the many small ones too (threshold 0 s): on
# tests/inference/test_world.py + tests/training/test_trainer.py, 149 s with an empty cache,
# 91 s with the compiles over 0.5 s cached, 66 s with all cached.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(ROOT, ".cache", "jax"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
CACHE_MAX_BYTES = 4 << 30


def _trim_compilation_cache(path: str, max_bytes: int) -> None:
  """Deletes the oldest entries until the cache holds at most max_bytes. jax evicts on its own
  only with the `filelock` package, which is not a dependency; a few tests' executables embed
  their constants (100 MB each), so an untrimmed cache grows with every change of them."""
  entries = []
  try:
    for e in os.scandir(path):
      try:
        st = e.stat()
      except FileNotFoundError:  # removed meanwhile (another session trims too)
        continue
      entries.append((st.st_mtime, st.st_size, e.path))  # written once: mtime is the entry's age
  except FileNotFoundError:  # no cache yet
    return
  total = sum(size for _, size, _ in entries)
  for _, size, p in sorted(entries):
    if total <= max_bytes:
      break
    total -= size
    try:
      os.remove(p)
    except FileNotFoundError:
      pass


_trim_compilation_cache(os.environ["JAX_COMPILATION_CACHE_DIR"], CACHE_MAX_BYTES)

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)

from absl import flags  # noqa: E402

if not flags.FLAGS.is_parsed():
  flags.FLAGS.mark_as_parsed()

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory):
  """A small real toy-world EpisodeStore (16x16 frames) shared by the session."""
  from data_pipelines.collect import collect

  path = str(tmp_path_factory.mktemp("data") / "toy16")
  collect("toy", path, episodes=24, seed=0, skills=(0.9, 0.3), size=16)
  return path


@pytest.fixture(scope="session")
def world_model_run(tmp_path_factory):
  """A tiny real pipeline workdir (data/ with latents, tokenizer/, dynamics/ at step 2) built once
  for the session: the play and agent-phase tests share it. Read it only; a test that writes
  (e.g. trains the agent) copies it first (pipeline_helpers.copy_world_model_run)."""
  from tests.pipeline_helpers import tiny_world_model_run

  return tiny_world_model_run(str(tmp_path_factory.mktemp("world_model") / "run"))


# The files that take a minute or more (`bash launch/test.sh --durations=20`), longest first.
# launch/test.sh runs the suite on two or more workers with `--dist loadfile` (each file whole on
# one worker, in collection order): starting the long files first keeps every worker busy to the
# end instead of leaving one of them on a long file alone.
LONG_FILES = (
  "tests/test_multiprocess.py",
  "tests/training/test_crash.py",
  "tests/training/test_resilience.py",
  "tests/training/test_agent_phases.py",
  "tests/training/test_trainer.py",
  "tests/models/test_tokenizer_loss.py",
  "tests/test_memory_plan.py",
)


# XLA:CPU's cheap compile settings (jax_disable_most_optimizations: LLVM at -O0, no expensive
# passes) for the files whose time is compiling many small programs, each run once or a few times.
# With an empty cache, tests/models/test_transformer.py + test_attention_paths.py take 68 s of CPU
# instead of 117 s, tests/test_memory_plan.py (it compiles only) 42 s instead of 72 s,
# tests/test_dry_run.py + test_benchmarks.py (their subprocesses too) 109 s instead of 164 s;
# the files whose runs stop after a few steps, each alone (user + system CPU, empty caches):
# tests/test_multiprocess.py 296 s instead of 363 s (its subprocesses inherit the setting),
# tests/training/test_agent_phases.py 97 s instead of 162 s, test_resilience.py 74 s instead of
# 89 s, tests/evaluation/ + tests/data_pipelines/ + tests/test_main_cli.py 153 s instead of 173 s.
# tests/test_play.py too: its setups 9 s instead of 15 s of wall (measured with test_trainer.py).
# Not for the files that train or evaluate for many steps, whose slower -O0 code costs more than
# the compiles save (tests/training/test_trainer.py + tests/test_play.py: 156 s instead of 135 s;
# the trainer's resume test alone 60 s instead of 42 s of wall), nor for
# tests/training/test_crash.py, whose restarts load the step from the cache (62 s against 59 s).
# The flag is part of the compilation-cache key, and it is set in the environment too, so that the
# subprocesses a test starts compile as the test itself does.
FAST_COMPILE_PATHS = (
  "tests/models/",
  "tests/inference/",
  "tests/objectives/test_agent.py",
  "tests/objectives/test_imagination.py",
  "tests/objectives/test_shortcut.py",
  "tests/objectives/test_twohot.py",
  "tests/training/test_dynamics_sharded.py",
  "tests/training/test_encode.py",
  "tests/training/test_imagine_policy_loss.py",
  "tests/training/test_imagine_terminal.py",
  "tests/test_memory_plan.py",
  "tests/test_dry_run.py",
  "tests/test_benchmarks.py",
  "tests/test_multiprocess.py",
  "tests/training/test_resilience.py",
  "tests/training/test_agent_phases.py",
  "tests/evaluation/",
  "tests/test_main_cli.py",
  "tests/data_pipelines/",
  "tests/test_play.py",
)
FAST_COMPILE_EXCEPT = ("tests/models/test_tokenizer_loss.py",)  # trains for many steps


def fast_compile(path: str) -> bool:
  """Whether the tests of file `path` (relative to the checkout) compile with the cheap settings."""
  return path.startswith(FAST_COMPILE_PATHS) and path not in FAST_COMPILE_EXCEPT


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
  """Sets the compile effort of `item`'s file before any of its fixtures is set up."""
  on = fast_compile(item.nodeid.split("::")[0])
  jax.config.update("jax_disable_most_optimizations", on)
  os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"] = "1" if on else "0"


def pytest_collection_modifyitems(config, items):
  rank = {path: i for i, path in enumerate(LONG_FILES)}
  items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))  # stable: the rest keep their order
