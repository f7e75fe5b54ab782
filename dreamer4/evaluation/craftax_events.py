"""Event outcomes in Craftax-Classic: does the world model show what an action does?

An event is a step of a dataset episode whose true next frame shows the outcome of the action
taken, read with the frame parser (craftax_state) from the two real frames around it:

  collect_wood  action `do`, and the inventory's wood count rises by one (the tree in front of
                the player is mined: craftax_classic game_logic, deterministic). The inventory
                row parses exactly at every daylight.
  place_table   action `place_table`, and the map cell the player faces (read from the player
                sprite of the frame before: left, right, up or down; never while asleep) turns
                into a crafting table (it costs 2 wood). Both frames must be drawn at daylight
                >= EXACT_DAYLIGHT, where the map parses exactly.

Frames and actions are stored as the windows read them: actions_discrete[f] is the action that
led from frame f - 1 to frame f, so an event is named by its outcome frame f. The achievement
unlocks the collector stores only mark an event's first occurrence in an episode; the parse
finds every one (the tests check both against the env's own state).

`outcomes(before, after)` scores any frame as the next frame of `before`: 1 where it shows the
outcome of each event type. The probe (probe.py, section `events`) scores it on the real next
frame, the tokenizer's reconstruction of it, and the world model's next frame generated from C
true context frames with the true action and with `noop` in its place (`make_event_fn`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from data_pipelines.envs.base import Action
from data_pipelines.envs.craftax import ACTION_NAMES
from dreamer4.evaluation import craftax_state as cs
from dreamer4.phases.dynamics import rollout

EVENTS = ("collect_wood", "place_table")
EVENT_ACTIONS = {"collect_wood": "do", "place_table": "place_table"}
COUNTERFACTUAL = "noop"
WOOD = cs.INVENTORY_NAMES.index("wood")
# Player sprite (overlay index) -> (drow, dcol) of the cell it faces (craftax DIRECTIONS).
_FACING = {"player_left": (0, -1), "player_right": (0, 1), "player_up": (-1, 0), "player_down": (1, 0)}
PARSE_CHUNK = 64  # frames per jitted parse when detecting events


def facing_cell(overlay_RC):
  """(row, col, ok) int32/bool [...]: the map cell the player faces, from the centre cell's
  sprite; ok is False (cell = the centre) while the player sleeps."""
  dr = np.zeros(len(cs.OVERLAY_NAMES), np.int32)
  dc = np.zeros(len(cs.OVERLAY_NAMES), np.int32)
  for name, (y, x) in _FACING.items():
    dr[cs.OVERLAY[name]], dc[cs.OVERLAY[name]] = y, x
  sprite = jnp.asarray(overlay_RC)[..., cs.CENTRE[0], cs.CENTRE[1]]
  ok = (sprite >= cs.OVERLAY["player_left"]) & (sprite <= cs.OVERLAY["player_down"])
  return cs.CENTRE[0] + jnp.asarray(dr)[sprite], cs.CENTRE[1] + jnp.asarray(dc)[sprite], ok


def _cell(block_RC, row, col):
  flat = block_RC.reshape(block_RC.shape[:-2] + (-1,))
  return jnp.take_along_axis(flat, (row * cs.COLS + col)[..., None], -1)[..., 0]


def outcomes(before: cs.CraftaxState, after: cs.CraftaxState) -> dict[str, jax.Array]:
  """bool [...] per event type: `after`, read as the frame following `before`, shows its outcome
  (collect_wood: wood count + 1; place_table: a table on the cell `before`'s player faces that
  held none)."""
  wood = lambda s: jnp.asarray(s.inventory_I)[..., WOOD]
  row, col, ok = facing_cell(before.overlay_RC)
  was = _cell(jnp.asarray(before.block_RC), row, col)
  now = _cell(jnp.asarray(after.block_RC), row, col)
  return {
    "collect_wood": wood(after) == wood(before) + 1,
    "place_table": ok & (now == cs.TABLE) & (was != cs.TABLE),
  }


def detect(before: cs.CraftaxState, after: cs.CraftaxState, action_ids, labelled) -> dict[str, jax.Array]:
  """bool [...] per event type: the step from `before` to `after` (real frames' parses) with the
  action `action_ids` (ACTION_NAMES index; `labelled` False: unknown) is that event."""
  out = outcomes(before, after)
  lit = (jnp.asarray(before.daylight) >= cs.EXACT_DAYLIGHT) & (jnp.asarray(after.daylight) >= cs.EXACT_DAYLIGHT)
  need_lit = {"collect_wood": False, "place_table": True}
  action_ids, labelled = jnp.asarray(action_ids), jnp.asarray(labelled, bool)
  return {
    name: out[name] & labelled & (action_ids == ACTION_NAMES.index(EVENT_ACTIONS[name])) & (lit | (not need_lit[name]))
    for name in EVENTS
  }


@functools.cache
def _detect_program():
  """detect() of real frames [N, S, S, 3] before and after, jitted (built on first use)."""
  return jax.jit(lambda before, after, ids, labelled: detect(cs.parse(before), cs.parse(after), ids, labelled))


def find_events(store, episode_ids, *, context: int, column: int = 0) -> dict[str, np.ndarray]:
  """{event: global frame indices f (sorted)}: the events (module docstring) of the episodes
  `episode_ids` of an EpisodeStore of craftax frames, whose outcome frame f has `context` frames
  of its episode before it (the context ends at f - 1). Only steps taking an event's action are
  parsed, PARSE_CHUNK pairs of frames per call."""
  wanted = np.asarray([ACTION_NAMES.index(EVENT_ACTIONS[n]) for n in EVENTS])
  cand, ids, lab = [], [], []
  for e in np.asarray(episode_ids):
    begin, end = int(store.episode_offsets[e]), int(store.episode_offsets[e + 1])
    first = begin + max(int(context), 1)
    if first >= end:
      continue
    a = store.read("actions_discrete", first, end)[:, column]
    labelled = store.read("action_labelled", first, end).astype(bool)
    keep = np.isin(a, wanted) & labelled
    cand.append(first + np.nonzero(keep)[0])
    ids.append(a[keep])
    lab.append(labelled[keep])
  cand_f = np.concatenate(cand + [np.zeros(0, np.int64)]).astype(np.int64)
  if not len(cand_f):
    return {name: np.zeros(0, np.int64) for name in EVENTS}
  ids_f, lab_f = np.concatenate(ids), np.concatenate(lab)
  found = {name: [] for name in EVENTS}
  for lo in range(0, len(cand_f), PARSE_CHUNK):
    f = cand_f[lo : lo + PARSE_CHUNK]
    pad = lambda x: np.concatenate([x, np.repeat(x[-1:], PARSE_CHUNK - len(x), axis=0)])
    pairs = np.stack([store.read("frames", i - 1, i + 1) for i in f])
    hits = jax.device_get(
      _detect_program()(
        pad(pairs[:, 0]), pad(pairs[:, 1]), pad(ids_f[lo : lo + PARSE_CHUNK]), pad(lab_f[lo : lo + PARSE_CHUNK])
      )
    )
    for name in EVENTS:
      found[name].append(f[np.asarray(hits[name])[: len(f)]])
  return {name: np.sort(np.concatenate(v)) for name, v in found.items()}


def spread(indices: np.ndarray, count: int) -> np.ndarray:
  """At most `count` of `indices`, spread evenly (every one when all fit)."""
  n = len(indices)
  if n <= count:
    return np.asarray(indices)
  return np.asarray(indices)[np.arange(count) * n // count]


def event_windows(store, frames_f: np.ndarray, context: int) -> dict[str, np.ndarray]:
  """The windows [E, C + 1, ...] of the events with outcome frames `frames_f`: the C context
  frames, then the outcome frame (frames, latents, actions_discrete, action_labelled)."""
  C = int(context)
  fields = ("frames", "latents", "actions_discrete", "action_labelled")
  return {name: np.stack([store.read(name, f - C, f + 1) for f in frames_f]) for name in fields}


def make_event_fn(dyn_def, tok_def, *, context: int, k: int, k_max: int, context_noise, window, column: int = 0):
  """event_fn(dyn_params, tok_params, batch, rng) -> {source: float32 [B, len(EVENTS)]}: for a
  batch of event windows (`event_windows`), whether each source's frame after the C context
  frames shows each event type's outcome (`outcomes`, against the real last context frame).

  Sources: true_frame (the real next frame), held (the last context frame again), tokenizer (the
  stored latents decoded), true_action / noop (the world model's next frame, generated with K
  shortcut steps as in the probe's rollout, with the true action / with `noop` instead)."""
  C = int(context)
  sample = dict(k=int(k), k_max=int(k_max), context_noise=float(context_noise), window=int(window))
  noop = ACTION_NAMES.index(COUNTERFACTUAL)

  def event_fn(dyn_params, tok_params, batch, rng):
    model, tokenizer = dyn_def.merge(dyn_params), tok_def.merge(tok_params)
    z = batch["latents"].astype(jnp.float32)
    B = z.shape[0]
    actions = Action.from_window(batch)
    swapped = actions._replace(
      discrete=actions.discrete.at[:, C, column].set(noop), labelled=actions.labelled.at[:, C].set(True)
    )
    both = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), actions, swapped)
    _, gen = rollout(model, tokenizer, jnp.concatenate([z[:, :C], z[:, :C]]), both, rng, horizon=1, **sample)
    recon = tokenizer.decode(z)[:, C]
    frames = batch["frames"]
    before = cs.parse(frames[:, C - 1])
    score = lambda x: jnp.stack([v.astype(jnp.float32) for v in outcomes(before, cs.parse(x)).values()], -1)
    return {
      "true_frame": score(frames[:, C]),
      "held": score(frames[:, C - 1]),
      "tokenizer": score(recon),
      "true_action": score(gen[:B, 0]),
      "noop": score(gen[B:, 0]),
    }

  return event_fn


SOURCES = ("true_frame", "held", "tokenizer", "true_action", "noop")


def summarise(per_event: dict[str, np.ndarray], kinds: np.ndarray, found: dict[str, int]) -> dict[str, dict]:
  """The report's `events` section: per event type, {"found": events detected in the held-out
  episodes, "frames": events scored, source: outcome rate (None without events)}. `per_event`
  holds [E, len(EVENTS)] per source; kinds [E] the EVENTS index of each scored event."""
  out = {}
  for i, name in enumerate(EVENTS):
    sel = np.asarray(kinds) == i
    n = int(sel.sum())
    row = {"found": int(found[name]), "frames": n}
    for source in SOURCES:
      row[source] = float(np.mean(np.asarray(per_event[source])[sel, i])) if n else None
    out[name] = row
  return out
