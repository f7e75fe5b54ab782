"""`python -m tests.training.slow_save <dreamer4.main flags>`: dreamer4.main with slow checkpoint commits.

With DREAMER4_TEST_SLOW_SAVE_S=<seconds> set, every asynchronous save of the train state
waits that long in Orbax's background thread after the state is written into the step's
temporary directory and before the step is committed (renamed into place), so
test_crash.py can kill -9 a run while a checkpoint write is in flight. The library has no
such hook: this module patches Orbax's state handler in the child process only. Like
tests/run_main.py, it runs dreamer4.main without TensorBoard (no TensorFlow import).
"""

import os
import runpy
import time

import orbax.checkpoint as ocp

SLOW_SAVE_ENV = "DREAMER4_TEST_SLOW_SAVE_S"


class _SleepFuture:
  """An Orbax commit future that just waits (once), in the thread that awaits the commit."""

  def __init__(self, seconds: float):
    self._seconds = seconds

  def result(self, timeout: float | None = None):
    del timeout
    seconds, self._seconds = self._seconds, 0.0
    time.sleep(seconds)

  def cancel(self) -> bool:
    return False


def slow_down_state_saves(seconds: float) -> None:
  """Makes every StandardCheckpointHandler save (the "state" item) commit `seconds` later."""
  inner = ocp.StandardCheckpointHandler.async_save

  async def async_save(self, directory, *args, **kwargs):
    futures = await inner(self, directory, *args, **kwargs)
    return list(futures or []) + [_SleepFuture(seconds)]

  ocp.StandardCheckpointHandler.async_save = async_save


if __name__ == "__main__":
  from tests.run_main import without_tensorboard

  without_tensorboard()
  seconds = float(os.environ.get(SLOW_SAVE_ENV, "0") or 0)
  if seconds > 0:
    slow_down_state_saves(seconds)
  runpy.run_module("dreamer4.main", run_name="__main__", alter_sys=True)
