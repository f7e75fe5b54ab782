"""A saved config.json older than some config keys still rebuilds its model (dreamer4/runs.py)."""

import json

from flax import nnx

from configs import dynamics as dynamics_config
from configs import tokenizer as tokenizer_config
from data_pipelines.envs.base import ActionComponent, ActionSpec
from dreamer4 import runs
from dreamer4.models.dynamics import Dynamics
from dreamer4.models.tokenizer import Tokenizer


def _old_run(tmp_path, name, cfg, what):
  """A workdir whose config.json lacks every key added later (runs.LATER_KEYS)."""
  d = cfg.to_dict()
  for key in runs.LATER_KEYS[what]["model"]:
    d["model"].pop(key, None)
  (tmp_path / name).mkdir()
  (tmp_path / name / "config.json").write_text(json.dumps(d))
  return str(tmp_path / name)


def test_old_configs_get_the_keys_added_later(tmp_path):
  tok = runs.read_config(_old_run(tmp_path, "tok", tokenizer_config.get_config("tiny"), "tokenizer"), "tokenizer", "")
  assert {k: tok.model[k] for k in runs.LATER_KEYS["tokenizer"]["model"]} == runs.LATER_KEYS["tokenizer"]["model"]
  with nnx.use_eager_sharding(False):
    nnx.eval_shape(lambda: Tokenizer.from_config(tok.model, (16, 16, 3), nnx.Rngs(0)))

  dyn = runs.read_config(_old_run(tmp_path, "dyn", dynamics_config.get_config("tiny"), "dynamics"), "dynamics", "")
  assert not dyn.model.scan_layers and not dyn.model.spatial_pos and dyn.model.k_max == 64
  spec = ActionSpec((ActionComponent("move", "discrete", 5),))
  with nnx.use_eager_sharding(False):
    nnx.eval_shape(lambda: Dynamics.from_config(dyn.model, 4, 8, spec, nnx.Rngs(0)))
  # A current config keeps its own values.
  cur = runs.upgrade_config(dynamics_config.get_config("tiny"), "dynamics")
  assert cur.model.to_dict() == dynamics_config.get_config("tiny").model.to_dict()
