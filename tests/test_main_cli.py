"""Bad input at the command line: one 'error:' line naming the setting, exit 2, nothing written."""

import os
import subprocess
import sys

import pytest

from tests.pipeline_helpers import tree_hash

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(args, tmp_path):
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  env.pop("XLA_FLAGS", None)
  return subprocess.run(
    [sys.executable, "-m", "dreamer4.main", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
  )


@pytest.mark.parametrize(
  "extra,expect",
  [
    (
      ["--config=configs/tokenizer.py:tiny", "--config.train.nope=1"],
      "--config.train.nope: the config has no key 'nope'",
    ),
    (
      ["--config=configs/tokenizer.py:tiny", "--config.train.batch_size=abc"],
      "--config.train.batch_size=abc: invalid literal",
    ),
    (["--config=configs/tokenizer.py:huge"], "unknown variant 'huge'; choose one of toy, tiny"),
    (["--config=configs/tokenizer.py:tiny", "--config.data.path=DATA_MISSING"], "metadata.json is missing"),
    (
      [
        "--config=configs/tokenizer.py:tiny",
        "--config.data.path=STORE",
        "--config.mesh.shape=(3,1,1)",
        "--cpu_devices=8",
      ],
      "--config.mesh.shape=(3, 1, 1) needs a multiple of 3 devices but 8 are present",
    ),
    (
      [
        "--config=configs/tokenizer.py:tiny",
        "--config.data.path=STORE",
        "--config.train.batch_size=6",
        "--cpu_devices=4",
      ],
      "--config.train.batch_size=6 does not divide over the 4 data-parallel devices",
    ),
    (["--config=configs/tokenizer.py:tiny", "--config.data.path=STORE", "--config.model.patch_size=5"], "patch_size"),
    (["--config=configs/tokenizer.py:tiny", "--config.data.path=STORE", "--config.data.window=0"], "window"),
    (
      ["--config=configs/pipeline.py:tiny", "--config.evaluate.tasks=reach_red,reach_purple"],
      "--config.evaluate.tasks: unknown task(s) reach_purple for env 'toy'; choose from reach_red",
    ),
  ],
)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, tiny_store, extra, expect):
  workdir = tmp_path / "work"
  args = [a.replace("DATA_MISSING", str(tmp_path / "nothing")).replace("STORE", tiny_store) for a in extra]
  proc = _run([*args, f"--workdir={workdir}"], tmp_path)
  errors = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert len(errors) == 1 and expect in errors[0], proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr
  assert not workdir.exists()


def _bad_inputs(tmp_path, store):
  """Files and directories the catalogue below points at (placeholders -> paths)."""
  import json
  import shutil

  import numpy as np

  from configs import tokenizer

  places = {}
  places["FILE"] = tmp_path / "plain.txt"
  places["FILE"].write_text("not a store")
  places["NOTSTORE"] = tmp_path / "junk"
  places["NOTSTORE"].mkdir()
  (places["NOTSTORE"] / "notes.txt").write_text("not a store either")
  places["V99"] = tmp_path / "v99"
  shutil.copytree(store, places["V99"])
  meta = json.loads((places["V99"] / "metadata.json").read_text())
  meta["schema_version"] = 99
  (places["V99"] / "metadata.json").write_text(json.dumps(meta))
  places["CORRUPT"] = tmp_path / "corrupt"
  shutil.copytree(store, places["CORRUPT"])
  shard = places["CORRUPT"] / "frames" / "c" / "0" / "0" / "0" / "0"  # every frame is in this shard
  shard.write_bytes(b"\xff" * shard.stat().st_size)
  places["TOKCFG"] = tmp_path / "tokenizer"  # a tokenizer run whose model cannot take 16x16 frames
  places["TOKCFG"].mkdir()
  cfg = tokenizer.get_config("tiny")
  cfg.model.patch_size = 5
  (places["TOKCFG"] / "config.json").write_text(cfg.to_json())
  places["WFILE"] = tmp_path / "workdir_is_a_file"
  places["WFILE"].write_text("a file where the workdir should be")
  places["WCKFILE"] = tmp_path / "ckfile"
  places["WCKFILE"].mkdir()
  (places["WCKFILE"] / "checkpoints").write_text("a file where checkpoints/ should be")
  places["WOTHER"] = tmp_path / "other_model"  # a checkpoint of some other model
  from dreamer4.training.checkpoint import Checkpointer

  ck = Checkpointer(str(places["WOTHER"] / "checkpoints"), async_save=False, data_names=())
  ck.save(4, {"params": {"w": np.zeros((3,), np.float32)}, "step": np.int32(4)})
  ck.close()
  return places


TOK = "--config=configs/tokenizer.py:tiny"


@pytest.mark.parametrize(
  "extra,expect",
  [
    (
      [TOK, "--config.train.batch_sizee=3"],
      "--config.train.batch_sizee: the config has no key 'batch_sizee' (did you mean \"batch_size\"",
    ),
    ([TOK, "--config.optim.lr=fast"], "--config.optim.lr=fast: could not convert string to float"),
    ([TOK, "--config.data.path=STORE", "--config.train.batch_size=-8"], "batch_size must be >= 1, got -8"),
    ([TOK, "--config.data.path=FILE"], "metadata.json is missing; this is not an EpisodeStore"),
    ([TOK, "--config.data.path=NOTSTORE"], "metadata.json is missing; this is not an EpisodeStore"),
    ([TOK, "--config.data.path=V99"], "metadata.json has schema_version 99, this code reads 1"),
    ([TOK, "--config.data.path=CORRUPT"], "array 'frames', episode"),
    (["--config=configs/dynamics.py:tiny", "--config.data.path=STORE"], "tokenizer workdir '' has no config.json"),
    (
      ["--config=configs/dynamics.py:tiny", "--config.data.path=STORE", "--config.tokenizer_workdir=TOKCFG"],
      "cannot take frames (16, 16, 3)",
    ),
    ([TOK, "--config.data.path=STORE", "--workdir=WFILE"], "is a file, not a directory"),
    ([TOK, "--config.data.path=STORE", "--workdir=WCKFILE"], "is a file, not a directory"),
    ([TOK, "--config.data.path=STORE", "--workdir=WOTHER"], "it was written by a different model or phase"),
  ],
)
def test_bad_input_catalogue_one_line_nothing_changed(tmp_path, tiny_store, extra, expect):
  """More kinds of bad input; files that existed before (store, workdir) are byte-identical after."""
  places = _bad_inputs(tmp_path, tiny_store)
  args = []
  for a in extra:
    flag, _, value = a.partition("=")
    args.append(
      f"{flag}={places[value] if value in places else tiny_store if value == 'STORE' else value}" if value else a
    )
  workdir = tmp_path / "work"
  if not any(a.startswith("--workdir=") for a in args):
    args.append(f"--workdir={workdir}")
  before, store_before = tree_hash(tmp_path), tree_hash(tiny_store)
  proc = _run(args, tmp_path)
  errors = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert len(errors) == 1 and expect in errors[0], proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr
  assert tree_hash(tmp_path) == before and tree_hash(tiny_store) == store_before
  assert not workdir.exists()
