"""Shared test helpers: a tiny real pipeline workdir (play, agent phases; built once per session by
the `world_model_run` fixture of tests/conftest.py) and a file-tree hash."""

import hashlib
import os
import shutil

import jax


def tiny_world_model_run(root: str) -> str:
  """RUN with data/ (latents included), tokenizer/ (initial weights) and dynamics/ (2 real steps).

  The tokenizer checkpoint holds its initial (untrained) weights and the dynamics run
  stops at step 2 of 3, which keeps compiles to a minimum; quality does not matter here.
  """
  from configs import pipeline
  from data_pipelines.episodes import EpisodeStore
  from dreamer4.phases.tokenizer import make_phase
  from dreamer4.pipeline import run_pipeline
  from dreamer4.training import state as st
  from dreamer4.training.checkpoint import Checkpointer
  from dreamer4.training.trainer import write_config

  cfg = pipeline.get_config("tiny")
  cfg.stages = ("collect",)
  run_pipeline(cfg, root)
  tok = cfg.tokenizer
  tok.data.path = os.path.join(root, "data")
  phase = make_phase(tok, EpisodeStore.open(tok.data.path))
  tx = st.make_optimizer(tok.optim, 10)
  state = jax.jit(lambda r: st.init_state(phase.model_def.init_params(r), tx, phase.init_aux()))(jax.random.key(1))
  ckpt = Checkpointer(os.path.join(root, "tokenizer", "checkpoints"), data_names=())
  ckpt.save(1, state)
  ckpt.close()
  write_config(os.path.join(root, "tokenizer"), tok)

  dyn = cfg.dynamics
  dyn.mesh.num_devices = 1  # one device compiles fastest; sharded steps are tested elsewhere
  dyn.train.num_steps = 3
  # Stopped as if interrupted: play uses the latest checkpoint, and the final evaluation's
  # compiles are skipped.
  dyn.train.stop_at_step = 2
  dyn.train.long_every = 1  # every step on long windows: one train-step compile
  dyn.loss.bootstrap_fraction = 0.0  # flow rows only: the cheapest train step to compile
  dyn.eval.sampling_steps = (4,)
  dyn.eval.horizon = 1
  dyn.eval.videos = 1
  cfg.encode.mesh.num_devices = 1
  cfg.stages = ("encode", "dynamics")
  out = run_pipeline(cfg, root)
  assert out["dynamics"]["step"] == 2
  return root


def copy_world_model_run(src: str, dst: str) -> str:
  """A copy of a `tiny_world_model_run` RUN at dst, for tests that write into it (agent phases).

  Its recorded paths (config.json) still name src's data/ and tokenizer/, which stay unchanged:
  the copy's own stages read them only.
  """
  shutil.copytree(src, dst)
  return dst


def tree_hash(root) -> dict[str, str]:
  """relative path -> sha256 of every file under root ({} when root does not exist)."""
  out = {}
  for dirpath, _, files in os.walk(root):
    for f in files:
      p = os.path.join(dirpath, f)
      with open(p, "rb") as fh:
        out[os.path.relpath(p, root)] = hashlib.sha256(fh.read()).hexdigest()
  return out
