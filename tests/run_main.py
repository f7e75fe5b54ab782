"""`python -m tests.run_main <dreamer4.main flags>`: dreamer4.main without TensorFlow, for test subprocesses.

Process 0 of a run writes its metrics through clu's default writer (dreamer4/training/metrics.py):
a logging writer and a TensorBoard SummaryWriter, whose module imports TensorFlow, about 12 s of
CPU in every process 0 that a test starts (a kill/restart test starts many). Here clu's
`metric_writers.summary_writer` module is replaced, before anything imports it, by one whose
SummaryWriter takes every write and keeps none; the rest (the logging writer, the asynchronous
multi-writer, the periodic actions, the multi-process barrier) is the real code. Tests that look
at the event files or at what is imported (tests/training/test_trainer.py, test_writer.py, the
TensorFlow test of tests/test_multiprocess.py) run dreamer4.main itself.
"""

import runpy
import sys
import types

SUMMARY_WRITER = "clu.metric_writers.summary_writer"


class DiscardingSummaryWriter:
  """clu's SummaryWriter interface without TensorBoard: every write is dropped."""

  def __init__(self, logdir, *args, **kwargs):
    del logdir, args, kwargs

  def write_summaries(self, step, values, metadata=None):
    pass

  def write_scalars(self, step, scalars):
    pass

  def write_images(self, step, images):
    pass

  def write_videos(self, step, videos):
    pass

  def write_audios(self, step, audios, *, sample_rate):
    pass

  def write_texts(self, step, texts):
    pass

  def write_histograms(self, step, arrays, num_buckets=None):
    pass

  def write_pointcloud(self, step, point_clouds, *, point_colors=None, configs=None):
    pass

  def write_hparams(self, hparams):
    pass

  def flush(self):
    pass

  def close(self):
    pass


def without_tensorboard() -> None:
  """Makes clu's default writer skip TensorBoard (and TensorFlow) in this process. Call it before
  anything imports `clu.metric_writers`."""
  assert "clu.metric_writers" not in sys.modules, "clu.metric_writers is imported already"
  stub = types.ModuleType(SUMMARY_WRITER, "clu's SummaryWriter without TensorFlow (tests/run_main.py)")
  stub.SummaryWriter = DiscardingSummaryWriter
  sys.modules[SUMMARY_WRITER] = stub


if __name__ == "__main__":
  without_tensorboard()
  runpy.run_module("dreamer4.main", run_name="__main__", alter_sys=True)
