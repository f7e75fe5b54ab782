r"""Where a finished world model loses: its tokenizer, its one-step dynamics and its free
rollouts, each measured on its own on held-out windows.

  python -m dreamer4.evaluation.probe --workdir=runs/toy [--windows=384] [--k=4] [--horizon=16] \
      [--events=128] [--out=runs/toy/probe.json]

--workdir is a pipeline workdir (data/ with the encode job's latents, tokenizer/, dynamics/;
dreamer4/pipeline.py `stage_dir`) of an env whose frames parse back into game state
(data_pipelines/envs `EnvSpec.state_parser`, dreamer4/evaluation/frame_state.py). Windows of
C + H frames (C: --context, by default the dynamics run's eval.context_frames; H: --horizon) come
from the dynamics run's held-out episodes (its data.eval_fraction and data.split_seed) under the
window rule of every phase (data_pipelines/windows.py: one window starts at every frame, padded
past the episode's end), spread evenly over them as the trainer's evaluation batches are
(data_pipelines/loader.py `eval_batches`). Only the real frames of a window (`valid_T`) count.
For the H frames after each window's C context frames it reports:

  tokenizer  reconstruction: the stored latents (the encode job's, checked against the tokenizer's
             checkpoint) decoded over the window, against the real frames: PSNR and the parser's
             per-frame scores (`frame_scores`; toy: agent cell, whole state; craftax: block-grid
             cell accuracy, whole block grid, overlays, inventory).
  one_step   teacher-forced prediction: every horizon frame generated with K shortcut steps from
             the C true frames before it (the sampler corrupts them to the run's context noise, as
             in every rollout) and decoded after them: latent MSE and scores, next to copying the
             frame before it (its true latent; its real frame's parse). Split by the group of the
             action that led to the frame (data_pipelines/envs `action_groups`; toy: vertical and
             horizontal moves, noop; craftax: the moves, which shift the player-centred view,
             against the other actions).
  rollout    the dynamics evaluation's free rollout (dreamer4/phases/dynamics.py `rollout`) from
             the C context frames with the true actions, per horizon step h and over the horizon:
             latent MSE and scores, next to holding the last context frame (its real frame:
             `_hold_last`; its decoded true latents, bounded by the tokenizer as the rollout is:
             `_hold_decoded`), with the PSNR of the rollout's and both held frames against the
             real ones.
  events     craftax runs only (null otherwise; --events=0 skips it): does the world model show
             what an action does (dreamer4/evaluation/craftax_events.py)? Every event of the
             held-out episodes, found by parsing the real frames around each `do` and
             `place_table` step: collect_wood (the inventory's wood count rises by one) and
             place_table (a crafting table appears on the map cell the player faces, read from
             its sprite in the frame before), whose C context frames lie in the episode ("found";
             at most --events of each, spread evenly, are scored: "frames"). For each, the next
             frame after the C true context frames is scored for the event's outcome against the
             real last context frame: true_frame (the real next frame: 1 by construction), held
             (the last context frame again: 0), tokenizer (the stored latents decoded: the
             ceiling), true_action (generated with K shortcut steps from the C context latents
             with the true action) and noop (the same, with `noop` as the last action: the
             counterfactual, which should not show the outcome). Values are outcome rates.

Every cell carries its number of frames ("frames"); the means of a cell without frames are null.
The report goes to --out as JSON (default WORKDIR/probe.json, written to a temporary file and
renamed) and to stdout as a table. Bad input (a missing workdir or stage, a dynamics run without
its tokenizer, an env without a parser, a bad flag such as --events < 0) stops with one line on
stderr ("error: ..."), exit code 2, before anything is written.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import sys
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from data_pipelines.envs import ENVS, action_groups
from data_pipelines.envs.base import Action
from data_pipelines.episodes import EpisodeStore
from data_pipelines.loader import eval_batches
from data_pipelines.windows import window_table
from dreamer4 import runs
from dreamer4.errors import UserError
from dreamer4.evaluation import frame_state, tool_io
from dreamer4.evaluation import video_metrics as vm
from dreamer4.phases.dynamics import frame_latent_mse, rollout
from dreamer4.pipeline import stage_dir

FIELDS = ("frames", "latents", "actions_discrete", "action_labelled")  # what a probed window reads
UNLABELLED = "unlabelled"  # the group of a frame whose action is not known
TRAIN_HINT = "python -m dreamer4.main --config=configs/pipeline.py:toy --workdir=DIR"


# ---------------------------------------------------------------------------------- the run


@dataclasses.dataclass(frozen=True)
class RunDirs:
  """The parts of a pipeline workdir the probe reads."""

  workdir: str
  data: str
  tokenizer: str
  dynamics: str


def _has_checkpoint(workdir: str) -> bool:
  ckpt = os.path.join(workdir, "checkpoints")
  return os.path.isdir(ckpt) and any(n.isdigit() for n in os.listdir(ckpt))


def locate(workdir: str | None) -> RunDirs:
  """The stages of the pipeline workdir `workdir` (files only: no jax). UserError, one line
  naming the path and the fix, when a part is missing."""
  if not workdir:
    raise UserError(f"--workdir is required: a pipeline workdir, e.g. --workdir=runs/toy (made by {TRAIN_HINT})")
  flag = f"--workdir={workdir}"
  if not os.path.isdir(workdir):
    raise UserError(f"{flag} does not exist; name a pipeline workdir (made by {TRAIN_HINT})")
  dirs = RunDirs(
    workdir=workdir,
    data=os.path.join(workdir, "data"),
    tokenizer=stage_dir(workdir, "tokenizer"),
    dynamics=stage_dir(workdir, "dynamics"),
  )
  if not os.path.isfile(os.path.join(dirs.dynamics, "config.json")):
    raise UserError(
      f"{flag} holds no dynamics run ({dirs.dynamics}/config.json is missing); train the world model "
      f"first: {TRAIN_HINT.replace('DIR', workdir)}"
    )
  if not _has_checkpoint(dirs.dynamics):
    raise UserError(
      f"{flag}: the dynamics run in {dirs.dynamics} has no checkpoint; finish its training first "
      "(rerun the pipeline command: it resumes)"
    )
  if not os.path.isfile(os.path.join(dirs.tokenizer, "config.json")) or not _has_checkpoint(dirs.tokenizer):
    raise UserError(
      f"{flag}: the dynamics run in {dirs.dynamics} has no tokenizer ({dirs.tokenizer} holds no trained "
      f"tokenizer run); put the tokenizer it was trained on there, or rerun {TRAIN_HINT.replace('DIR', workdir)}"
    )
  if not os.path.isfile(os.path.join(dirs.data, "metadata.json")):
    raise UserError(
      f"{flag} holds no dataset ({dirs.data}/metadata.json is missing); the pipeline's collect and "
      f"encode stages write it: {TRAIN_HINT.replace('DIR', workdir)}"
    )
  return dirs


def state_parser(store, flag: str):
  """The frame parser of the store's env, with the per-frame scores the probe pools; UserError if none."""
  env = str(store.metadata.get("env", ""))
  spec = ENVS.get(env)
  if spec is None or not spec.state_parser:
    raise UserError(
      f"{flag}: the dataset {store.path} is of env {env!r}, which has no frame-state parser; register "
      "one as EnvSpec.state_parser in data_pipelines/envs/__init__.py (interface: dreamer4/evaluation/frame_state.py)"
    )
  parser = frame_state.parser_for_env(env, store.frame_shape)
  if parser is None:
    raise UserError(
      f"{flag}: {spec.state_parser} cannot read the frames {tuple(store.frame_shape)} of {store.path}; "
      "probe a run on frames that parser reads (its readable())"
    )
  if not callable(getattr(parser, frame_state.SCORES, None)):
    raise UserError(
      f"{flag}: {spec.state_parser} has no {frame_state.SCORES}(truth, gen); add it (see "
      f"dreamer4/evaluation/frame_state.py) to probe env {env!r}"
    )
  return parser


def check_settings(dcfg, *, k: int, context: int, horizon: int, windows: int, batch_size: int) -> None:
  """UserError for flags the run cannot take."""
  k_max = int(dcfg.model.k_max)
  if k < 1 or k & (k - 1) or k > k_max:
    raise UserError(f"--k={k} must be a power of two no larger than the model's k_max={k_max}")
  for name, value in (("context", context), ("horizon", horizon), ("windows", windows), ("batch_size", batch_size)):
    if value < 1:
      raise UserError(f"--{name}={value} must be >= 1")


# ---------------------------------------------------------------------------------- windows


def held_out_windows(store, dcfg, window: int, max_windows: int) -> tuple[dict[str, np.ndarray], np.ndarray, int]:
  """(batch, held-out episode ids, windows available): at most `max_windows` held-out windows of
  `window` frames, spread evenly over all of them (no repeats), as one numpy batch [W, T, ...]."""
  _, eval_ids = store.split(float(dcfg.data.eval_fraction), seed=int(dcfg.data.split_seed))
  available = len(window_table(store.episode_offsets, eval_ids, window)[0])
  count = min(int(max_windows), available)
  if count < 1:
    raise UserError(
      f"dataset {store.path} has no held-out windows (held-out episodes: {len(eval_ids)}); collect more "
      "episodes or raise the dynamics run's data.eval_fraction"
    )
  # One batch of `count` windows picks window i * available // count: every window once when all fit.
  (batch,) = eval_batches(
    store.path, window=window, batch_size=count, episode_ids=eval_ids, max_batches=1, fields=FIELDS
  )
  return batch, np.asarray(eval_ids), available


def discrete_column(action_spec) -> int:
  """The column of actions_discrete that holds the first discrete component (-1: none)."""
  column = 0
  for comp in action_spec.components:
    if comp.kind == "discrete":
      return column
    if comp.kind != "continuous":
      column += comp.columns
  return -1


def frame_groups(actions_discrete, labelled, groups: Sequence[str], column: int) -> tuple[np.ndarray, list[str]]:
  """(group index per frame, group names): each frame's action id mapped through `groups` (a
  name per id); frames with an unlabelled action (or an env without discrete actions) fall in
  UNLABELLED, listed last."""
  names = list(dict.fromkeys(groups))
  index_of_id = np.asarray([names.index(g) for g in groups] or [0], np.int64)
  labelled = np.asarray(labelled, bool)
  if column < 0 or not groups:
    return np.full(labelled.shape, len(names), np.int64), names + [UNLABELLED]
  ids = np.clip(np.asarray(actions_discrete)[..., column], 0, len(groups) - 1)
  return np.where(labelled, index_of_id[ids], len(names)), names + [UNLABELLED]


# ---------------------------------------------------------------------------------- statistics


def _mean_or_none(total: float, n: int) -> float | None:
  if n <= 0:
    return None
  value = total / n
  return float(value) if math.isfinite(value) else None


def cell_means(values: dict[str, np.ndarray], mask, cells, names: Sequence[str]) -> dict[str, dict[str, Any]]:
  """Pooled per-frame values: for every cell name, the frames where `mask` holds and `cells`
  (int, same shape) is its index, and the mean of each value over them.

  Returns {name: {"frames": n, key: mean or None (no frame)}}, names in order.
  """
  mask = np.asarray(mask, bool)
  cells = np.asarray(cells)
  out = {}
  for i, name in enumerate(names):
    sel = mask & (cells == i)
    n = int(sel.sum())
    row: dict[str, Any] = {"frames": n}
    for key, v in values.items():
      row[key] = _mean_or_none(float(np.sum(np.asarray(v, np.float64)[sel])), n)
    out[name] = row
  return out


def summarise(per_frame: dict[str, dict[str, np.ndarray]], valid, group_BH, group_names: Sequence[str]) -> dict:
  """The report's three sections from per-frame values [W, H] (see the module docstring)."""
  valid = np.asarray(valid, bool)
  W, H = valid.shape
  zeros = np.zeros((W, H), np.int64)
  h_BH = np.broadcast_to(np.arange(H), (W, H))
  tokenizer = cell_means(per_frame["tokenizer"], valid, zeros, ["all"])["all"]
  one_step = cell_means(per_frame["one_step"], valid, zeros, ["all"])
  groups = cell_means(per_frame["one_step"], valid, group_BH, group_names)
  one_step.update({name: row for name, row in groups.items() if name != UNLABELLED or row["frames"]})
  roll = cell_means(per_frame["rollout"], valid, zeros, ["all"])
  roll.update(cell_means(per_frame["rollout"], valid, h_BH, [f"h{h + 1:02d}" for h in range(H)]))
  return {"tokenizer": tokenizer, "one_step": one_step, "rollout": roll}


# ---------------------------------------------------------------------------------- the model


def make_probe_fn(dyn_def, tok_def, parser, *, context: int, horizon: int, k: int, k_max: int, context_noise, window):
  """probe_fn(dyn_params, tok_params, batch, rng) -> {section: {name: float32 [B, H]}}: the
  per-frame values of the horizon frames of a batch of windows [B, C + H] (jit it)."""
  C, H = int(context), int(horizon)
  sample = dict(k=int(k), k_max=int(k_max), context_noise=float(context_noise), window=int(window))

  def probe_fn(dyn_params, tok_params, batch, rng):
    model, tokenizer = dyn_def.merge(dyn_params), tok_def.merge(tok_params)
    z_BTNL = batch["latents"].astype(jnp.float32)
    frames = batch["frames"]
    actions = Action.from_window(batch)
    B = z_BTNL.shape[0]
    z_true = z_BTNL[:, C:]
    # Parses of the real frames: the last context frame, then the horizon.
    parsed = parser.parse(frames[:, C - 1 :])
    truth = jax.tree.map(lambda v: v[:, 1:], parsed)
    before = jax.tree.map(lambda v: v[:, :-1], parsed)  # each horizon frame's predecessor
    held = jax.tree.map(lambda v: jnp.broadcast_to(v[:, :1], v[:, 1:].shape), parsed)  # the last context frame
    score = lambda state: parser.frame_scores(truth, state)
    one_key, roll_key = jax.random.split(rng)

    recon_all = tokenizer.decode(z_BTNL)
    recon = recon_all[:, C:]
    real = frames[:, C:].astype(jnp.float32) / 255.0  # the horizon's real frames in [0, 1]
    tok = {"psnr": vm.psnr_BT(recon, real)}
    tok.update(score(parser.parse(recon)))

    # Teacher forcing: horizon frame h from the C true frames before it, as B * H windows of C + 1.
    idx_HJ = jnp.arange(H)[:, None] + jnp.arange(C + 1)[None, :]
    sub = lambda x: x[:, idx_HJ].reshape((B * H, C + 1) + x.shape[2:])
    z_sub = sub(z_BTNL)
    z1, gen1 = rollout(model, tokenizer, z_sub[:, :C], jax.tree.map(sub, actions), one_key, horizon=1, **sample)
    one = {
      "latent_mse": frame_latent_mse(z1.reshape(z_true.shape), z_true),
      "latent_mse_copy_last": frame_latent_mse(z_BTNL[:, C - 1 : -1], z_true),
    }
    gen_state, copy_state = score(parser.parse(gen1.reshape((B, H) + gen1.shape[2:]))), score(before)
    one.update(gen_state)
    one.update({f"{name}_copy_last": v for name, v in copy_state.items()})

    z_roll, gen_roll = rollout(model, tokenizer, z_BTNL[:, :C], actions, roll_key, horizon=H, **sample)
    roll = {
      "latent_mse": frame_latent_mse(z_roll, z_true),
      "latent_mse_hold_last": frame_latent_mse(jnp.broadcast_to(z_BTNL[:, C - 1 : C], z_true.shape), z_true),
    }
    roll.update(score(parser.parse(gen_roll)))
    roll.update({f"{name}_hold_last": v for name, v in score(held).items()})
    # The last context frame as the tokenizer decodes it: a reference bounded by the tokenizer, as
    # the rollout is, so the two differ by what the dynamics model adds.
    held_frames = jnp.broadcast_to(recon_all[:, C - 1 : C], recon.shape)
    roll["psnr"], roll["psnr_hold_decoded"] = vm.psnr_BT(gen_roll, real), vm.psnr_BT(held_frames, real)
    held_real = jnp.broadcast_to(frames[:, C - 1 : C].astype(jnp.float32) / 255.0, real.shape)
    roll["psnr_hold_last"] = vm.psnr_BT(held_real, real)
    # Pixel MSE as well: a held frame equal to the true one (nothing moved) scores PSNR's 100-dB
    # cap, which weighs heavily in a mean of per-frame PSNR; 10 log10(1 / mean MSE) does not.
    roll["pixel_mse"], roll["pixel_mse_hold_last"] = vm.mse_BT(gen_roll, real), vm.mse_BT(held_real, real)
    roll.update({f"{name}_hold_decoded": v for name, v in score(parser.parse(held_frames)).items()})
    return {"tokenizer": tok, "one_step": one, "rollout": roll}

  return probe_fn


def _single_device_mesh():
  from configs import common  # pylint: disable=g-import-not-at-top
  from dreamer4 import sharding as shd  # pylint: disable=g-import-not-at-top

  c = common.mesh_config("single")
  c.num_devices = 1
  return shd.make_mesh(c)


def _chunks(batch: dict[str, np.ndarray], size: int):
  """(rows, chunk): batches of exactly `size` rows (the last padded with copies of its last row,
  so one program serves every chunk), with the number of real rows."""
  total = len(next(iter(batch.values())))
  for lo in range(0, total, size):
    part = {key: x[lo : lo + size] for key, x in batch.items()}
    rows = len(next(iter(part.values())))
    if rows < size:
      part = {key: np.concatenate([x, np.repeat(x[-1:], size - rows, axis=0)]) for key, x in part.items()}
    yield rows, part


def run_batched(fn, params: tuple, batch: dict[str, np.ndarray], batch_size: int, key) -> Any:
  """fn(*params, chunk, rng) over `batch` in chunks of min(batch_size, rows) rows (`_chunks`;
  chunk i draws its noise from fold_in(key, i)), the outputs' rows concatenated (numpy)."""
  size = min(int(batch_size), len(next(iter(batch.values()))))
  parts = []
  for i, (rows, part) in enumerate(_chunks(batch, size)):
    out = jax.device_get(fn(*params, part, jax.random.fold_in(key, i)))
    parts.append(jax.tree.map(lambda x, r=rows: np.asarray(x)[:r], out))
  return jax.tree.map(lambda *xs: np.concatenate(xs), *parts)


def event_section(store, dcfg, eval_ids, models, *, context: int, k: int, max_events: int, batch_size: int, key):
  """The report's `events` section (craftax runs; module docstring), or None for other envs."""
  from dreamer4.evaluation import craftax_events as ce  # pylint: disable=g-import-not-at-top

  if str(store.metadata.get("env", "")) != "craftax" or max_events < 1:
    return None
  C = int(context)
  column = discrete_column(store.action_spec)
  found = ce.find_events(store, eval_ids, context=C, column=column)
  picked = {name: ce.spread(f, int(max_events)) for name, f in found.items()}
  frames_f = np.concatenate([picked[name] for name in ce.EVENTS]).astype(np.int64)
  kinds = np.concatenate([np.full(len(picked[name]), i) for i, name in enumerate(ce.EVENTS)])
  counts = {name: len(f) for name, f in found.items()}
  if not len(frames_f):
    return ce.summarise({s: np.zeros((0, len(ce.EVENTS))) for s in ce.SOURCES}, kinds, counts)
  dyn_def, dyn_params, tok_def, tok_params = models
  m = dcfg.model
  event_fn = jax.jit(
    ce.make_event_fn(
      dyn_def,
      tok_def,
      context=C,
      k=k,
      k_max=int(m.k_max),
      context_noise=float(dcfg.eval.context_noise),
      window=int(m.context) or (C + 1),
      column=column,
    )
  )
  per_event = run_batched(event_fn, (dyn_params, tok_params), ce.event_windows(store, frames_f, C), batch_size, key)
  return ce.summarise(per_event, kinds, counts)


# ---------------------------------------------------------------------------------- the probe


def probe(
  workdir: str,
  *,
  windows: int = 384,
  k: int = 4,
  horizon: int = 16,
  context: int = 0,
  batch_size: int = 32,
  seed: int = 0,
  events: int = 128,
) -> dict[str, Any]:
  """The report of the pipeline workdir `workdir` (module docstring); UserError on bad input."""
  dirs = locate(workdir)
  flag = f"--workdir={workdir}"
  dcfg = runs.read_config(dirs.dynamics, "dynamics", f"train the world model first: {TRAIN_HINT}")
  C = int(context) or int(dcfg.eval.context_frames)
  check_settings(dcfg, k=k, context=C, horizon=horizon, windows=windows, batch_size=batch_size)
  if events < 0:
    raise UserError(f"--events={events} must be >= 0 (0: no events section)")
  store = EpisodeStore.open(dirs.data)
  parser = state_parser(store, flag)
  env = str(store.metadata.get("env", ""))
  groups = action_groups(env, store.action_spec)
  batch, eval_ids, available = held_out_windows(store, dcfg, C + horizon, windows)

  mesh = _single_device_mesh()
  tcfg, tok_def, tok_params, tok_step = runs.load_tokenizer(dirs.tokenizer, mesh, store.frame_shape)
  attrs = runs.check_latents(store, dirs.tokenizer, tok_step, tcfg, prefix=f"{flag}: ", match_workdir=False)
  dyn_def = runs.dynamics_model_def(dcfg.model, attrs["num_latents"], attrs["latent_dim"], store.action_spec)
  dyn_step, dyn_params = runs.restore_model(dirs.dynamics, dyn_def, mesh)

  m = dcfg.model
  window = int(m.context) or (C + horizon)
  probe_fn = jax.jit(
    make_probe_fn(
      dyn_def,
      tok_def,
      parser,
      context=C,
      horizon=horizon,
      k=k,
      k_max=int(m.k_max),
      context_noise=float(dcfg.eval.context_noise),
      window=window,
    )
  )
  key = jax.random.key(int(seed))
  with jax.set_mesh(mesh):
    per_frame = run_batched(probe_fn, (dyn_params, tok_params), {f: batch[f] for f in FIELDS}, batch_size, key)

  valid = batch["valid_T"][:, C:]
  group_BH, group_names = frame_groups(
    batch["actions_discrete"][:, C:], batch["action_labelled"][:, C:], groups, discrete_column(store.action_spec)
  )
  comp = next((c for c in store.action_spec.components if c.kind == "discrete"), None)
  labels = [comp.labels[i] if i < len(comp.labels) else str(i) for i in range(comp.size)] if comp else []
  report = {
    "workdir": workdir,
    "env": env,
    "dynamics_step": int(dyn_step),
    "tokenizer_step": int(tok_step),
    "settings": {
      "k": int(k),
      "context": C,
      "horizon": int(horizon),
      "context_noise": float(dcfg.eval.context_noise),
      "model_window": window,
      "windows": int(len(valid)),
      "windows_available": int(available),
      "held_out_episodes": int(len(eval_ids)),
      "eval_fraction": float(dcfg.data.eval_fraction),
      "split_seed": int(dcfg.data.split_seed),
      "seed": int(seed),
    },
    "scores": [name for name in per_frame["tokenizer"] if name != "psnr"],  # the parser's frame_scores
    "action_groups": dict(zip(labels, groups)),
  }
  report.update(summarise(per_frame, valid, group_BH, group_names))
  with jax.set_mesh(mesh):
    report["events"] = event_section(
      store,
      dcfg,
      eval_ids,
      (dyn_def, dyn_params, tok_def, tok_params),
      context=C,
      k=k,
      max_events=events,
      batch_size=batch_size,
      key=jax.random.fold_in(key, 1 << 20),
    )
  report["settings"]["max_events"] = int(events)
  return report


# ---------------------------------------------------------------------------------- output


def _fmt(value, digits: int) -> str:
  if value is None:
    return "-"
  return f"{value:.{digits}f}" if digits >= 0 else f"{value:.3g}"


def _table(title: str, rows: dict[str, dict], columns: list[tuple[str, str, int]]) -> list[str]:
  """Lines of one section: a row per cell, columns (key, header, digits; digits < 0: 3 significant)."""
  first = max([len("cell")] + [len(name) for name in rows])
  widths = [max(len(header), 8) for _, header, _ in columns]
  lines = [
    title,
    "  " + "cell".ljust(first) + "  frames  " + "  ".join(h.rjust(w) for (_, h, _), w in zip(columns, widths)),
  ]
  for name, row in rows.items():
    cells = "  ".join(_fmt(row.get(key), d).rjust(w) for (key, _, d), w in zip(columns, widths))
    lines.append("  " + name.ljust(first) + f"  {row['frames']:6d}  " + cells)
  return lines


def format_report(report: dict[str, Any]) -> str:
  """The report as a readable table (one section per stage of the world model)."""
  s = report["settings"]
  scores = report["scores"]
  lines = [
    f"probe {report['workdir']} ({report['env']}; tokenizer step {report['tokenizer_step']}, dynamics step "
    f"{report['dynamics_step']}): {s['windows']} of {s['windows_available']} held-out windows "
    f"({s['held_out_episodes']} episodes), context {s['context']}, horizon {s['horizon']}, K={s['k']}",
    "",
  ]
  tok_cols = [("psnr", "psnr", 2)] + [(name, name, 3) for name in scores]
  lines += _table("tokenizer: decoded true latents vs real frames", {"all": report["tokenizer"]}, tok_cols)
  pairs = lambda ref: (
    [("latent_mse", "latent_mse", -1), (f"latent_mse_{ref}", ref, -1)]
    + [c for name in scores for c in ((name, name, 3), (f"{name}_{ref}", ref, 3))]
  )
  lines.append("")
  lines += _table(
    f"one step, teacher-forced from {s['context']} true frames, by action group (ref: copy the frame before)",
    report["one_step"],
    pairs("copy_last"),
  )
  lines.append("")
  lines += _table(
    "free rollout, true actions, per horizon step (ref: hold the last context frame)",
    report["rollout"],
    [("psnr", "psnr", 2), ("psnr_hold_last", "hold_last", 2), ("pixel_mse", "pixel_mse", -1)]
    + [("pixel_mse_hold_last", "hold_last", -1)]
    + pairs("hold_last"),
  )
  lines.append("")
  lines += _table(
    "free rollout against the last context frame decoded from its true latents (bounded by the tokenizer)",
    report["rollout"],
    [("psnr", "psnr", 2), ("psnr_hold_decoded", "hold_decoded", 2)]
    + [c for name in scores for c in ((name, name, 3), (f"{name}_hold_decoded", "hold_decoded", 3))],
  )
  if report.get("events"):
    from dreamer4.evaluation.craftax_events import SOURCES  # pylint: disable=g-import-not-at-top

    lines.append("")
    cols = [("found", "found", 0)] + [(src, src, 3) for src in SOURCES]
    lines += _table(
      f"events: outcome shown in the next frame after {s['context']} true frames (true action vs noop)",
      report["events"],
      cols,
    )
  return "\n".join(lines)


def write_json(report: dict[str, Any], path: str) -> None:
  """Writes `report` to `path` atomically (dreamer4/evaluation/tool_io.py)."""
  tool_io.write_json(report, path, ".probe-")


class _QuietOrbax(logging.Filter):
  """Restoring only the params of a train-state checkpoint makes Orbax warn about every other item."""

  def filter(self, record):
    return record.levelno >= logging.ERROR or "orbax" not in record.pathname


def main(argv: Sequence[str] | None = None) -> int:
  """The command line (module docstring); returns the exit code."""
  quiet = _QuietOrbax()
  logging.getLogger("absl").addFilter(quiet)
  try:
    return _main(argv)
  finally:
    logging.getLogger("absl").removeFilter(quiet)


def _main(argv: Sequence[str] | None) -> int:
  ap = argparse.ArgumentParser(prog="python -m dreamer4.evaluation.probe", description=__doc__.split("\n\n")[0])
  ap.add_argument("--workdir", default=None, help="pipeline workdir (data/, tokenizer/, dynamics/)")
  ap.add_argument("--windows", type=int, default=384, help="held-out windows to probe (at most all)")
  ap.add_argument("--k", type=int, default=4, help="shortcut steps per generated frame (a power of two <= k_max)")
  ap.add_argument("--horizon", type=int, default=16, help="frames generated after the context")
  ap.add_argument(
    "--context",
    type=int,
    default=0,
    help="true frames before the first generated one (0: the run's eval.context_frames)",
  )
  ap.add_argument("--batch_size", type=int, default=32, help="windows per model call")
  ap.add_argument("--seed", type=int, default=0, help="seed of the generation noise")
  ap.add_argument("--events", type=int, default=128, help="craftax: events scored per event type (0: none)")
  ap.add_argument("--out", default=None, help="the JSON report (default WORKDIR/probe.json)")
  args = ap.parse_args(argv)

  def compute():
    out = args.out or os.path.join(args.workdir or "", "probe.json")
    locate(args.workdir)  # a missing run is named before the --out check
    tool_io.check_out_folder(out)
    report = probe(
      args.workdir,
      windows=args.windows,
      k=args.k,
      horizon=args.horizon,
      context=args.context,
      batch_size=args.batch_size,
      seed=args.seed,
      events=args.events,
    )
    return report, out

  return tool_io.run_tool(compute, format_report, ".probe-")


if __name__ == "__main__":
  sys.exit(main())
