"""Finished runs, loaded: a phase's config from its workdir, its model rebuilt from that
config and restored onto a mesh, and the latents a store must hold for its tokenizer.

Later phases, the encode job, the evaluation agents and the play page read earlier runs
only through here, so each needs nothing but the earlier run's workdir.
"""

from __future__ import annotations

import json
from typing import Any

import ml_collections
from etils import epath
from flax import nnx

from data_pipelines.episodes import EpisodeStore
from dreamer4.errors import CheckpointError, ConfigError, UserError
from dreamer4.models.agent import AgentModel, ImagineHeads
from dreamer4.models.dynamics import Dynamics
from dreamer4.models.tokenizer import Tokenizer
from dreamer4.training.checkpoint import restore_params
from dreamer4.training.state import ModelDef, to_abstract

LATENTS = "latents"  # the store array the encode job writes


# Keys added to configs/ after runs were saved, per run kind and section, with the value that
# rebuilds an older run as it was trained (its config.json lacks them). `read_config` fills
# them in, so every other reader of a config uses plain attribute access. (scan_layers=False:
# a run older than scanned layers has unscanned checkpoints.)
LATER_KEYS = {
  "tokenizer": {
    "model": dict(
      dtype="float32",
      remat=False,
      scan_layers=False,
      remat_policy="nothing",
      context=0,
      readout_bias_init=0.0,
      readout_init_scale=1.0,
      block_skip=False,
      output="sigmoid",
      attention="dense",
    )
  },
  "dynamics": {
    "model": dict(
      k_max=64,
      dtype="float32",
      remat=False,
      spatial_pos=False,
      scan_layers=False,
      remat_policy="nothing",
      attention="dense",
    ),
    "eval": dict(sweep_batches=0),  # 0: every evaluation batch sweeps every K
  },
}


def upgrade_config(cfg: ml_collections.ConfigDict, what: str) -> ml_collections.ConfigDict:
  """`cfg` (a `what` run's saved config) with the keys of `LATER_KEYS[what]` it lacks filled in."""
  for section, defaults in LATER_KEYS.get(what, {}).items():
    for key, value in defaults.items():
      if section in cfg and key not in cfg[section]:
        cfg[section][key] = value
  return cfg


def read_config(workdir: str, what: str, hint: str) -> ml_collections.ConfigDict:
  """The config.json that the `what` run wrote into `workdir`, upgraded to the current keys
  (`upgrade_config`); CheckpointError (with `hint`) if none."""
  path = epath.Path(workdir or ".") / "config.json"
  if not workdir or not path.exists():
    raise CheckpointError(f"{what} workdir {workdir!r} has no config.json; {hint}")
  return upgrade_config(ml_collections.ConfigDict(json.loads(path.read_text())), what)


def restore(workdir: str, abstract) -> tuple[int, Any]:
  """(step, params) of the run in `workdir`: its latest checkpoint's params, or the subtree
  that `abstract` (ShapeDtypeStructs with shardings) names, onto those shardings."""
  return restore_params(str(epath.Path(workdir) / "checkpoints"), abstract)


def restore_model(workdir: str, model_def: ModelDef, mesh) -> tuple[int, Any]:
  """(step, params) of the run in `workdir`, placed on `mesh` by the model's sharding rules."""
  return restore(workdir, to_abstract(model_def.abstract_params, model_def.param_shardings(mesh)))


# ---------------------------------------------------------------------------------- models


def _build(make) -> ModelDef:
  """ModelDef.build(make); a model the config cannot build (e.g. heads that do not divide the
  width, raised as ValueError by the transformer) is a ConfigError."""
  try:
    return ModelDef.build(make)
  except ValueError as e:
    raise ConfigError(str(e)) from None


def dynamics_model_def(model_cfg, num_latents: int, latent_dim: int, action_spec) -> ModelDef:
  """ModelDef of the dynamics model of `model_cfg` over latents [N, L]; ConfigError if it cannot be built."""
  return _build(lambda rng: Dynamics.from_config(model_cfg, num_latents, latent_dim, action_spec, nnx.Rngs(rng)))


def agent_model_def(dyn_model_cfg, agent_cfg, num_latents, latent_dim, action_spec, num_tasks) -> ModelDef:
  """ModelDef of the AgentModel: the dynamics model plus agent tokens, task embedding and heads."""

  def make(rng):
    rngs = nnx.Rngs(rng)
    dyn = Dynamics.from_config(
      dyn_model_cfg,
      num_latents,
      latent_dim,
      action_spec,
      rngs,
      num_agent_tokens=int(agent_cfg.num_agent_tokens),
      num_tasks=int(num_tasks),
    )
    return AgentModel(
      dyn, mtp=int(agent_cfg.mtp), hidden=int(agent_cfg.head_hidden), num_layers=int(agent_cfg.head_layers), rngs=rngs
    )

  return _build(make)


def imagine_heads_def(agent_def: ModelDef, agent_cfg) -> ModelDef:
  """ModelDef of phase 3's ImagineHeads (policy and value) over the AgentModel's dynamics."""
  dyn_abstract = agent_def.merge(agent_def.abstract_params).dynamics  # shapes only
  a = agent_cfg
  return ModelDef.build(
    lambda rng: ImagineHeads(
      dyn_abstract, mtp=int(a.mtp), hidden=int(a.head_hidden), num_layers=int(a.head_layers), rngs=nnx.Rngs(rng)
    )
  )


# ---------------------------------------------------------------------------------- runs


def tokenizer_config(workdir: str) -> ml_collections.ConfigDict:
  """The config of the tokenizer run in `workdir`; CheckpointError if it has none."""
  return read_config(
    workdir,
    "tokenizer",
    "train the tokenizer first (python -m dreamer4.main "
    "--config=configs/tokenizer.py:toy --workdir=DIR) and name that DIR",
  )


def load_tokenizer(workdir: str, mesh, frame_shape):
  """A finished tokenizer, frozen: (config, ModelDef, params on `mesh`, step).

  Frames of another size than it was trained on fail with one line.
  """
  cfg = tokenizer_config(workdir)
  try:
    mdef = ModelDef.build(lambda rng: Tokenizer.from_config(cfg.model, tuple(frame_shape), nnx.Rngs(rng)))
  except ValueError as e:
    raise CheckpointError(f"tokenizer {workdir} cannot take frames {tuple(frame_shape)}: {e}") from None
  try:
    step, params = restore_model(workdir, mdef, mesh)
  except CheckpointError as e:
    raise CheckpointError(f"{e} (is the tokenizer in {workdir} trained on frames {tuple(frame_shape)}?)") from None
  return cfg, mdef, params, step


def agent_configs(workdir: str, flag: str = ""):
  """(config, dynamics config) of the phase-2 run in `workdir`; CheckpointError if either is missing.

  `flag` names the setting that points at `workdir` in the error when it holds no run.
  """
  cfg = read_config(workdir, "agent", "train phase 2 first" + (f" and name its workdir in {flag}" if flag else ""))
  dyn_cfg = read_config(
    cfg.dynamics_workdir, "dynamics", f"the agent workdir {workdir} names a missing dynamics workdir"
  )
  return cfg, dyn_cfg


def load_agent(workdir: str, mesh, store=None, flag: str = ""):
  """A finished phase-2 run, frozen: (config, dynamics config, store, AgentModel ModelDef, params on `mesh`).

  `store` defaults to the dataset the run trained on; `flag` names the setting that
  points at `workdir` in the error when it holds no run.
  """
  cfg, dyn_cfg = agent_configs(workdir, flag)
  if store is None:
    store = EpisodeStore.open(cfg.data.path)
  N, L = latent_shape(store)
  mdef = agent_model_def(dyn_cfg.model, cfg.agent, N, L, store.action_spec, max(1, len(store.task_names)))
  _, params = restore_model(workdir, mdef, mesh)
  return cfg, dyn_cfg, store, mdef, params


# ---------------------------------------------------------------------------------- latents


def latent_shape(store) -> tuple[int, int]:
  """(num_latents, latent_dim) of the latents in `store`; ConfigError if the encode job has not run."""
  attrs = store.array_attrs(LATENTS) or {}
  if "num_latents" not in attrs:
    raise ConfigError(
      f"dataset {store.path} holds no latents; run the encode job first "
      "(python -m dreamer4.main --config=configs/encode.py ...)"
    )
  return int(attrs["num_latents"]), int(attrs["latent_dim"])


def latents_attrs(tokenizer_workdir: str, step: int, tcfg) -> dict:
  """The attrs of the latents that the tokenizer in `tokenizer_workdir` at `step` writes."""
  return {
    "tokenizer_workdir": str(tokenizer_workdir),
    "tokenizer_step": int(step),
    "num_latents": int(tcfg.model.num_latents),
    "latent_dim": int(tcfg.model.latent_dim),
  }


def latents_ready(store, attrs: dict) -> bool:
  """Whether `store` holds complete latents of every frame, made as `attrs` says."""
  have = store.array_attrs(LATENTS)
  return bool(
    have
    and have.get("complete")
    and have.get("frames") == store.num_frames
    and all(have.get(k) == v for k, v in attrs.items())
  )


def check_latents(
  store, tokenizer_workdir: str, step: int, tcfg, *, prefix: str = "", match_workdir: bool = True
) -> dict:
  """The latents attrs of the tokenizer (`latents_attrs`); UserError, one line with the
  encode command, unless `store` holds them complete. `match_workdir=False` accepts
  latents recorded under another path of the tokenizer (a run moved as a whole)."""
  attrs = latents_attrs(tokenizer_workdir, step, tcfg)
  want = attrs if match_workdir else {k: v for k, v in attrs.items() if k != "tokenizer_workdir"}
  if not latents_ready(store, want):
    raise UserError(
      f"{prefix}dataset {store.path} holds no complete latents of tokenizer {tokenizer_workdir} step {step} "
      f"(found: {store.array_attrs(LATENTS) or None}); run python -m dreamer4.main --config=configs/encode.py "
      f"--config.data.path={store.path} --config.tokenizer_workdir={tokenizer_workdir}"
    )
  return attrs
