"""Phase 2: agent tokens, behaviour cloning and reward model [P §3.3].

The world model of phase 1b is rebuilt from its workdir's config.json with agent tokens
(`config.model.num_agent_tokens`, default 1) and a task embedding, warm-started from its
checkpoint (the new tokens and the heads start fresh), and finetuned as a whole with
three RMS-normalised losses [P §3, Eq 9]:

  shortcut forcing (as in phase 1b)  +  MTP behaviour cloning  +  MTP reward (two-hot).

The agent tokens read every modality and nothing reads them, so adding them cannot
change a world-model prediction (test_agent_tokens_are_read_by_nobody in
tests/models/test_dynamics.py checks that the task input changes no latent prediction).
The heads read the agent tokens of a second pass over the window in which every frame
is corrupted once to the context noise level (dreamer4/models/agent.py explains why).

Data mixture [P §4.1: "half uniform, half task-relevant"]: `data.relevant_fraction` of every
batch comes from task-relevant episodes (those that accomplished their task,
data_pipelines.loader.relevant_episode_ids) and the rest uniformly; the dynamics loss reads the uniform rows, BC the
relevant ones, the reward loss all rows (see `loss_fn`). `MixtureStreams` draws these batches
for the trainer (the phase's `make_streams`). With `data.relevant_until_success` the relevant
windows start before their episode's goal (where BC has labels under `loss.bc_until_success`).
With `data.relabel_tasks` the relevant rows are windows of every (episode, task) pair where the
episode accomplished a labelled task, carrying that task (`data_pipelines.loader.task_demos`).
With `data.task_reward` the rewards are each row's task's: 1 on the frame that unlocked it, else 0
(`with_task_reward`; Craftax's own reward pays every achievement alike).
"""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import numpy as np

from data_pipelines import loader as data_loader
from data_pipelines.envs.base import Action
from data_pipelines.report import UNLOCKS, success_frames
from dreamer4 import runs
from dreamer4.errors import ConfigError, UserError
from dreamer4.inference.sampler import context_tau_index
from dreamer4.models.agent import agent_embedding
from dreamer4.models.dynamics import Dynamics, d_min_index, make_training_fn
from dreamer4.objectives import normalize
from dreamer4.objectives.agent import bc_reward_loss
from dreamer4.objectives.shortcut import shortcut_loss
from dreamer4.training.phase import DataShapes, Phase, Streams, TrainData
from dreamer4.training.state import to_abstract

AGENT_FIELDS = ("latents", "actions_discrete", "action_labelled", "rewards", "tasks")


def context_pass(model: Dynamics, batch, noise_BTNL, context_noise: float):
  """h [B, T, D]: agent embeddings with every frame corrupted once to the context level.

  The same corruption (and keys) as `kv_cache.commit_frame`, so with the same noise
  this equals the agent embeddings of frames committed one by one to a KV cache.
  """
  z_BTNL = batch["latents"].astype(jnp.float32)
  B, T = z_BTNL.shape[:2]
  ctx_idx = context_tau_index(context_noise, model.k_max)
  signal = ctx_idx / model.k_max
  noise = noise_BTNL
  z_ctx = (1.0 - signal) * noise + signal * z_BTNL
  tau = jnp.full((B, T), ctx_idx, jnp.int32)
  d = jnp.full((B, T), d_min_index(model.k_max), jnp.int32)
  out = model(z_ctx, tau, d, Action.from_window(batch), tasks_BT=batch["tasks"])
  return agent_embedding(out["agent_BTKD"])


def dynamics_rows(relevant_B, count: int):
  """Indices of the `count` rows that carry the dynamics loss (relevant_B False), in batch order.

  The global batch stacks each process's [uniform | relevant] block, so the uniform rows
  are not the first rows; gathering them first lets the shortcut loss draw its bootstrap
  rows (its first rows) at the configured share of exactly these rows.
  """
  return jnp.argsort(relevant_B.astype(jnp.int32), stable=True)[:count]


def dynamics_row_count(fraction: float, global_batch: int, process_count: int) -> int:
  """Rows of a global batch that carry the dynamics loss (static): the uniform rows of every
  process's [uniform | relevant] block (`with_relevant`)."""
  local = global_batch // process_count
  return (local - data_loader.relevant_rows(float(fraction), local)) * process_count


def with_relevant(uniform: dict, relevant: dict, relevant_ids) -> dict:
  """One local batch: the uniform rows, then the relevant rows, flagged in relevant_B (which
  half a row is from); relevant_episode_B flags every row whose episode accomplished its task
  (all relevant rows and the uniform rows that happen to be from such episodes)."""
  out = {k: np.concatenate([uniform[k], relevant[k]], axis=0) for k in uniform}
  out["relevant_B"] = np.concatenate([np.zeros(len(uniform["index"]), bool), np.ones(len(relevant["index"]), bool)])
  out["relevant_episode_B"] = out["relevant_B"] | np.isin(out["episode"], np.asarray(relevant_ids))
  return out


def before_success(start_B, episode_B, window: int, done_at_E) -> np.ndarray:
  """bool [B, T]: slot t of each window is at or before the frame on which its episode
  accomplished its task (`data_pipelines.report.success_frames`; an episode that never did: its
  last frame). Slot t holds global frame start + t."""
  return before_done(start_B, window, np.asarray(done_at_E)[np.asarray(episode_B, np.int64)])


def task_reward_columns(store) -> np.ndarray:
  """int64 [tasks]: per task of the store, its column of the achievement unlocks, or -1 where the
  task is not an achievement (data.task_reward). Raises UserError for a store without unlocks."""
  if UNLOCKS not in store.array_names:
    raise UserError(
      f"{store.path}: --config.data.task_reward needs the store's {UNLOCKS!r} array (a Craftax collection); "
      "set --config.data.task_reward=False"
    )
  names = list(store.metadata["extra_arrays"][UNLOCKS].get("attrs", {}).get("names", []))
  return np.asarray([names.index(t) if t in names else -1 for t in store.task_names], np.int64)


def with_task_reward(batch: dict, columns_K: np.ndarray) -> dict:
  """data.task_reward [P §4.1: sparse binary rewards, one per task]: each frame's reward becomes 1
  where it unlocked the achievement of its row's task, else 0 (tasks that are not achievements keep
  the stored reward), 0 on padding; the unlocks array is dropped from the batch."""
  unlocks_BTK = np.asarray(batch.pop(UNLOCKS))
  col_BT = columns_K[np.asarray(batch["tasks"], np.int64)]
  hit_BT = np.take_along_axis(unlocks_BTK, np.maximum(col_BT, 0)[..., None], axis=-1)[..., 0] > 0
  reward_BT = np.where(col_BT >= 0, hit_BT.astype(np.float32), np.asarray(batch["rewards"], np.float32))
  if "valid_T" in batch:
    reward_BT = reward_BT * np.asarray(batch["valid_T"], np.float32)
  batch["rewards"] = reward_BT.astype(np.asarray(batch["rewards"]).dtype)
  return batch


def before_done(start_B, window: int, done_B) -> np.ndarray:
  """bool [B, T]: slot t of row b holds a global frame (start_B[b] + t) at or before done_B[b]."""
  frame_BT = np.asarray(start_B, np.int64)[:, None] + np.arange(window)[None, :]
  return frame_BT <= np.asarray(done_B, np.int64)[:, None]


class MixtureStreams(Streams):
  """[P §4.1]: every local batch is `data.relevant_fraction` task-relevant rows after uniform ones.

  Streams "data" (the uniform rows) and "data_relevant" (windows of the training episodes
  that accomplished their task), both of `data.window` frames; each step draws one batch of
  each and joins them (`with_relevant`). Held-out batches get relevant_B for their windows
  of task-relevant episodes (e.g. BC accuracy on them).
  """

  flags = ("relevant_B", "relevant_episode_B", "bc_T")

  def __init__(self, config, data: TrainData, pad: str):
    frac, local_batch = float(config.data.relevant_fraction), data.local_batch
    n_relevant = data_loader.relevant_rows(frac, local_batch)
    if not 1 <= n_relevant < local_batch:
      raise ConfigError(
        f"--config.data.relevant_fraction={frac} of a per-process batch of {local_batch} leaves "
        "no uniform or no relevant rows; raise --config.train.batch_size or change the fraction"
      )
    relevant = data_loader.relevant_episode_ids(data.store, data.train_ids)
    if not relevant:
      raise UserError(
        f"{config.data.path}: no training episode has a positive return, so "
        "--config.data.relevant_fraction has nothing to draw from; collect episodes with "
        "successes or set --config.data.relevant_fraction=0"
      )
    logging.info(
      "data mixture: %d uniform + %d relevant rows per process (%d of %d episodes relevant)",
      local_batch - n_relevant,
      n_relevant,
      len(relevant),
      len(data.train_ids),
    )
    # data.task_reward: checked before any stream opens the unlocks it reads (a clear error without them)
    self._reward_columns = task_reward_columns(data.store) if config.data.task_reward else None
    window = config.data.window
    offsets = np.asarray(data.store.episode_offsets, np.int64)
    success_at = success_frames(data.store)
    # data.relevant_until_success: relevant windows start no later than the frame before the
    # goal's frame, so each holds at least one action taken before the task was accomplished.
    self._last_anchor = np.maximum(success_at - 1, offsets[:-1]) if config.data.relevant_until_success else None
    # data.relabel_tasks: the relevant rows are windows of every (episode, task) the episode
    # accomplished, with that task as its label (data_pipelines.loader.task_demos).
    self._demos = None
    if config.data.relabel_tasks:
      self._demos = data_loader.task_demos(data.store, data.train_ids, bool(config.data.relevant_until_success))
      relevant = sorted(set(self._demos.episode.tolist()))
      logging.info("relabelled tasks: %d demonstrations in %d episodes", len(self._demos), len(relevant))
      relevant_iter = data.make_iter(window, n_relevant, self._demos.episode, demos=self._demos)
    else:
      relevant_iter = data.make_iter(window, n_relevant, relevant, last_anchor=self._last_anchor)
    super().__init__(
      {"data": data.make_iter(window, local_batch - n_relevant), "data_relevant": relevant_iter}, {"data": window}
    )
    self.relevant_ids = relevant
    self._store, self._eval_ids, self._pad = data.store, data.eval_ids, pad
    # bc_T: the BC labels end where the episode accomplished its task (config loss.bc_until_success).
    self._done_at = success_at if config.loss.bc_until_success else offsets[1:] - 1
    self._bc_until_success = bool(config.loss.bc_until_success)
    self._window = window

  def next(self, kind: str) -> dict:
    uniform, relevant = next(self.iters[kind]), next(self.iters["data_relevant"])
    out = with_relevant(uniform, relevant, self.relevant_ids)
    done_B = self._done_at[out["episode"]]
    if "done_at" in relevant and self._bc_until_success:  # relabelled rows: where their task was done
      done_B[len(uniform["episode"]) :] = relevant["done_at"]
    out["bc_T"] = before_done(out["start"], self._window, done_B)
    return out if self._reward_columns is None else with_task_reward(out, self._reward_columns)

  def label_eval(self, batches: list[dict]) -> None:
    relevant_eval = data_loader.relevant_episode_ids(self._store, self._eval_ids)
    for b in batches:
      b["relevant_B"] = np.isin(b["episode"], relevant_eval)
      b["bc_T"] = before_success(b["start"], b["episode"], b["action_labelled"].shape[1], self._done_at)
      if self._reward_columns is not None:
        with_task_reward(b, self._reward_columns)

  def coverage_tables(self, kind: str) -> tuple:
    if kind != "data":
      return ()
    offsets, window = self._store.episode_offsets, self.windows[kind]
    if self._demos is not None:
      d = self._demos
      return (data_loader.window_table(offsets, d.episode, window, self._pad, entry_anchor=d.last_anchor),)
    return (data_loader.window_table(offsets, self.relevant_ids, window, self._pad, self._last_anchor),)


class AgentPhase(Phase):
  """Phase 2 in the trainer (see dreamer4/training/phase.py `Phase`).

  Built from the shapes of its dataset (latents included) and the phase-1b model config;
  `warm_start` reads the phase-1b checkpoint (config.dynamics_workdir).
  """

  name = "agent"
  data_fields = AGENT_FIELDS + ("first_T",)

  def __init__(self, config, shapes: DataShapes, dyn_model_cfg):
    self.validate(config)
    self.config = config
    self.dyn_model_cfg = dyn_model_cfg
    self.num_latents, self.latent_dim = shapes.latents()
    self.num_tasks = shapes.num_tasks
    self.model_def = runs.agent_model_def(
      dyn_model_cfg, config.agent, self.num_latents, self.latent_dim, shapes.action_spec, self.num_tasks
    )

  @staticmethod
  def validate(config) -> None:
    if config.agent.mtp < 0:
      raise ConfigError(f"--config.agent.mtp must be >= 0, got {config.agent.mtp}")
    if config.loss.bc_rows not in ("relevant_half", "relevant_episodes"):
      raise ConfigError(f"--config.loss.bc_rows={config.loss.bc_rows!r}; choose relevant_half or relevant_episodes")
    frac = float(config.data.relevant_fraction)
    if frac > 0 and (frac >= 1 or config.data.get("long_window", 0)):
      raise ConfigError(
        f"--config.data.relevant_fraction={frac} needs 0 <= fraction < 1 and no data.long_window; "
        "set it to 0.5 (the paper's mixture) or 0 (uniform batches)"
      )
    if config.data.task_reward and frac <= 0:
      raise ConfigError("--config.data.task_reward needs the data mixture: set --config.data.relevant_fraction=0.5")

  @property
  def read_fields(self) -> tuple[str, ...]:
    """The step's store arrays, plus the achievement unlocks that data.task_reward turns into rewards on the host."""
    return super().read_fields + ((UNLOCKS,) if self.config.data.task_reward else ())

  def init_aux(self):
    return normalize.rms_init(("dynamics", "bc", "reward"))

  def make_streams(self, data: TrainData) -> Streams:
    if float(self.config.data.relevant_fraction) <= 0:
      return super().make_streams(data)
    return MixtureStreams(self.config, data, self.window_pad)

  def warm_start(self, params, shardings):
    """Fresh params with the phase-1b dynamics weights restored into params["dynamics"]."""
    new_keys = ("agent_tokens", "task_embed")
    dyn_abs = to_abstract(params["dynamics"], shardings["dynamics"])
    want = {k: v for k, v in dyn_abs.items() if k not in new_keys}
    _, restored = runs.restore(self.config.dynamics_workdir, want)
    out = dict(params)
    out["dynamics"] = dict(params["dynamics"], **restored)
    return out

  def loss_fn(self, params, aux, batch, rng, frozen):
    del frozen
    c = self.config
    model = self.model_def.merge(params)
    sc_rng, ctx_rng = jax.random.split(rng)
    # Data mixture ([P §4.1], config data.relevant_fraction): MixtureStreams flags the
    # task-relevant rows; the dynamics loss reads only the uniform rows and BC only the
    # relevant ones (no optimistic generations, more signal for BC); the reward loss reads
    # both (the paper leaves it open). Without the flag every row counts for every loss.
    relevant_B = batch.get("relevant_B")
    labelled_BT = batch["action_labelled"].astype(bool)
    bc_B = relevant_B
    if relevant_B is not None and c.loss.bc_rows == "relevant_episodes":
      bc_B = batch.get("relevant_episode_B", relevant_B)  # plus uniform rows of task-relevant episodes
    bc_labelled_BT = labelled_BT if bc_B is None else labelled_BT & bc_B[:, None]
    if "bc_T" in batch:  # no labels after the episode accomplished its task (loss.bc_until_success)
      bc_labelled_BT = bc_labelled_BT & batch["bc_T"].astype(bool)
    valid_BT = batch.get("valid_T")
    dyn = {k: batch[k] for k in ("latents", "actions_discrete", "action_labelled")}
    if valid_BT is not None:
      dyn["valid_T"] = valid_BT
    if relevant_B is not None:  # only the uniform rows, so the bootstrap share is of them
      rows = dynamics_rows(
        relevant_B, dynamics_row_count(c.data.relevant_fraction, relevant_B.shape[0], jax.process_count())
      )
      dyn = {k: v[rows] for k, v in dyn.items()}
    apply_fn = make_training_fn(model.dynamics, Action.from_window(dyn))
    dyn_loss, metrics = shortcut_loss(
      apply_fn,
      dyn["latents"],
      sc_rng,
      k_max=model.dynamics.k_max,
      bootstrap_fraction=c.loss.bootstrap_fraction,
      independent_fraction=c.loss.independent_fraction,
      ramp=c.loss.ramp,
      valid_BT=dyn.get("valid_T"),
    )
    noise = jax.random.normal(ctx_rng, batch["latents"].shape, jnp.float32)
    h_BTD = context_pass(model.dynamics, batch, noise, c.agent.context_noise)
    first_BT = batch["first_T"].astype(bool)
    losses, agent_metrics = bc_reward_loss(
      model.policy,
      model.reward,
      h_BTD,
      Action.from_window(batch),
      batch["rewards"].astype(jnp.float32),
      first_BT,
      bc_labelled_BT,
      int(c.agent.mtp),
      valid_BT=valid_BT,
    )
    n_dyn, aux = normalize.rms_normalize(aux, "dynamics", dyn_loss, decay=c.loss.rms_decay)
    n_bc, aux = normalize.rms_normalize(aux, "bc", losses["bc"], decay=c.loss.rms_decay)
    n_rew, aux = normalize.rms_normalize(aux, "reward", losses["reward"], decay=c.loss.rms_decay)
    loss = c.loss.dynamics_weight * n_dyn + c.loss.bc_weight * n_bc + c.loss.reward_weight * n_rew
    return loss, (aux, dict(metrics, **agent_metrics, shortcut_loss=dyn_loss))

  def eval_fn(self, params, batch, frozen):
    model = self.model_def.merge(params)
    noise = jax.random.normal(jax.random.key(0), batch["latents"].shape, jnp.float32)
    h_BTD = context_pass(model.dynamics, batch, noise, self.config.agent.context_noise)
    first_BT = batch["first_T"].astype(bool)
    actions = Action.from_window(batch)
    valid_BT = batch.get("valid_T")
    labelled_BT = batch["action_labelled"].astype(bool)
    if "bc_T" in batch:  # the labels BC trains on: none after the task was accomplished
      labelled_BT = labelled_BT & batch["bc_T"].astype(bool)
    _, m = bc_reward_loss(
      model.policy,
      model.reward,
      h_BTD,
      actions,
      batch["rewards"].astype(jnp.float32),
      first_BT,
      labelled_BT,
      int(self.config.agent.mtp),
      valid_BT=valid_BT,
    )
    # Next-action accuracy of the acting head (n = 0) where the target is valid.
    pol = model.policy.params(h_BTD[:, :-1], 0)
    valid = labelled_BT[:, 1:].astype(jnp.float32)
    if valid_BT is not None:
      valid = valid * valid_BT[:, 1:].astype(jnp.float32)
    pred = jnp.argmax(pol[..., : model.policy.spec.components[0].size], axis=-1)
    hit = (pred == actions.discrete[:, 1:, 0]).astype(jnp.float32)
    m["bc_accuracy_n0"] = jnp.sum(hit * valid) / jnp.maximum(jnp.sum(valid), 1.0)
    relevant_B = batch.get("relevant_B")
    if relevant_B is not None:  # held-out windows of episodes that accomplished their task
      rv = valid * relevant_B[:, None].astype(jnp.float32)
      m["bc_accuracy_n0_relevant"] = jnp.where(
        jnp.sum(rv) > 0, jnp.sum(hit * rv) / jnp.maximum(jnp.sum(rv), 1.0), jnp.nan
      )
    return m

  def summary_fn(self, params, batch, rng, frozen):
    return {}


def make_phase(config, store, mesh=None) -> AgentPhase:
  """Phase 2 on `store`, continuing the phase-1b run in config.dynamics_workdir."""
  dyn_cfg = runs.read_config(
    config.dynamics_workdir,
    "dynamics",
    "train the dynamics model first and name its workdir in --config.dynamics_workdir",
  )
  return AgentPhase(config, DataShapes.of_store(store, latents=True), dyn_cfg.model).load_frozen(store, mesh)
