"""The encode job: latents written into the store equal the tokenizer's own per-episode encoding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import encode as encode_config
from data_pipelines.collect import collect
from data_pipelines.episodes import EpisodeStore
from dreamer4 import sharding as shd
from dreamer4.errors import CheckpointError
from dreamer4.phases.encode import encode_dataset
from dreamer4.phases.tokenizer import make_phase
from dreamer4.runs import load_tokenizer
from dreamer4.training import state as st
from dreamer4.training.checkpoint import Checkpointer
from dreamer4.training.trainer import write_config


@pytest.fixture(scope="module")
def tokenizer_workdir(tmp_path_factory, tiny_store):
  """A tokenizer workdir (config.json + one checkpoint of freshly initialised weights)."""
  from configs import tokenizer

  cfg = tokenizer.get_config("tiny")
  cfg.data.path = tiny_store
  workdir = str(tmp_path_factory.mktemp("tok"))
  phase = make_phase(cfg, EpisodeStore.open(tiny_store))
  tx = st.make_optimizer(cfg.optim, 10)
  state = jax.jit(lambda r: st.init_state(phase.model_def.init_params(r), tx, phase.init_aux()))(jax.random.key(5))
  ck = Checkpointer(f"{workdir}/checkpoints", data_names=())
  ck.save(4, state)
  ck.close()
  write_config(workdir, cfg)
  return workdir


def test_encoded_latents_equal_per_episode_encoding(tiny_store, tokenizer_workdir, tmp_path):
  import shutil

  data = str(tmp_path / "data")
  shutil.copytree(tiny_store, data)
  cfg = encode_config.get_config()
  cfg.data.path = data
  cfg.tokenizer_workdir = tokenizer_workdir
  cfg.encode.block_frames = 8  # blocks much shorter than episodes: halos and episode edges matter
  cfg.encode.batch_blocks = 8
  out = encode_dataset(cfg, str(tmp_path / "w"))
  assert out["frames"] > 0 and not out["skipped"]
  store = EpisodeStore.open(data)
  attrs = store.array_attrs("latents")
  assert attrs["complete"] and attrs["tokenizer_step"] == 4 and attrs["frames"] == store.num_frames

  mesh = shd.make_mesh(cfg.mesh)
  tcfg, mdef, params, _ = load_tokenizer(tokenizer_workdir, mesh, store.frame_shape)
  model = mdef.merge(jax.device_get(params))
  offsets = store.episode_offsets
  for e in (0, 1, len(offsets) - 2):
    lo, hi = int(offsets[e]), int(offsets[e + 1])
    frames = store.read("frames", lo, hi)[None].astype(np.float32) / 255.0
    want = np.asarray(model.encode(jnp.asarray(frames)))[0]  # the whole episode, windowed causal mask
    np.testing.assert_allclose(store.read("latents", lo, hi), want, atol=2e-5)
  # A second run with the same tokenizer reuses the finished array.
  assert encode_dataset(cfg, str(tmp_path / "w"))["skipped"]


def test_tokenizer_for_other_frame_size_is_refused(tokenizer_workdir, tmp_path):
  other = str(tmp_path / "big")
  collect("toy", other, episodes=2, seed=1, skills=(1.0,), size=32)
  cfg = encode_config.get_config()
  cfg.data.path = other
  cfg.tokenizer_workdir = tokenizer_workdir
  with pytest.raises(CheckpointError, match=r"has shape .* trained on frames \(32, 32, 3\)"):
    encode_dataset(cfg, str(tmp_path / "w"))
  assert EpisodeStore.open(other).array_attrs("latents") is None
