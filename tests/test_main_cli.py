"""Bad input at the command line: one 'error:' line naming the setting, exit 2, nothing written."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(args, tmp_path):
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  env.pop("XLA_FLAGS", None)
  return subprocess.run([sys.executable, "-m", "dreamer4.main", *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("extra,expect", [
    (["--config=configs/tokenizer.py:tiny", "--config.train.nope=1"], "--config.train.nope: the config has no key 'nope'"),
    (["--config=configs/tokenizer.py:tiny", "--config.train.batch_size=abc"], "--config.train.batch_size=abc: invalid literal"),
    (["--config=configs/tokenizer.py:huge"], "unknown variant 'huge'; choose one of toy, tiny"),
    (["--config=configs/tokenizer.py:tiny", "--config.data.path=DATA_MISSING"], "metadata.json is missing"),
    (["--config=configs/tokenizer.py:tiny", "--config.data.path=STORE", "--config.mesh.shape=(3,1,1)",
      "--cpu_devices=8"], "--config.mesh.shape=(3, 1, 1) needs a multiple of 3 devices but 8 are present"),
    (["--config=configs/tokenizer.py:tiny", "--config.data.path=STORE", "--config.train.batch_size=6",
      "--cpu_devices=4"], "--config.train.batch_size=6 does not divide over the 4 data-parallel devices"),
    (["--config=configs/tokenizer.py:tiny", "--config.data.path=STORE", "--config.model.patch_size=5"],
     "patch_size"),
    (["--config=configs/tokenizer.py:tiny", "--config.data.path=STORE", "--config.data.window=500"],
     "window"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, tiny_store, extra, expect):
  workdir = tmp_path / "work"
  args = [a.replace("DATA_MISSING", str(tmp_path / "nothing")).replace("STORE", tiny_store) for a in extra]
  proc = _run([*args, f"--workdir={workdir}"], tmp_path)
  errors = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert len(errors) == 1 and expect in errors[0], proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr
  assert not workdir.exists()
