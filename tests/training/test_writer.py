"""Only the process that writes TensorBoard imports TensorFlow.

TensorFlow (through `clu.metric_writers`) costs about 20 s per process on 2 cores; every
process of a multi-process run imports the trainer and creates a writer, but only process 0
writes TensorBoard. Checked in a fresh process, since the test session may hold TensorFlow.
"""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_trainer_and_writer_of_other_processes_do_not_import_tensorflow(tmp_path):
  code = f"""
import sys
import numpy as np
import jax
from absl import logging
logging.set_verbosity(logging.INFO)  # to read the lines back below
from dreamer4 import main
from dreamer4.training import metrics as mt, trainer
assert 'tensorflow' not in sys.modules, 'importing the trainer pulled in TensorFlow'
jax.process_index = lambda *a: 1  # as process 1 of a multi-process run
w = mt.create_writer({str(tmp_path)!r})
w.write_scalars(3, {{"loss": 0.5, "steps": 2}})
w.write_images(3, {{"grid": np.zeros((1, 4, 4, 3), np.uint8)}})
w.write_texts(3, {{"table": "t"}})
w.flush()
w.close()
assert 'tensorflow' not in sys.modules, 'a writer of process 1 pulled in TensorFlow'
"""
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "[3] loss=0.5, steps=2" in proc.stderr, proc.stderr[-3000:]
  assert os.listdir(tmp_path) == []  # no event file: process 1 writes no TensorBoard
