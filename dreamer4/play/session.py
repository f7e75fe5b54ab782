"""Play inside the world model: the run, the keys, and one person's session (no HTTP here).

  locate_run(workdir)        -> RunPaths   finds the dynamics run, its tokenizer, dataset and
                                           agent folder from the config.json files the phases
                                           wrote (pure file-system; no jax)
  key_bindings(action_spec)  -> [Binding]  keyboard keys for every action of the dataset's spec
  PlaySession(paths, ...)                  loads the frozen tokenizer and dynamics model, wraps
                                           them in an `inference.world.World` (KV cache, one
                                           jitted step) and holds one person's session: reset,
                                           step, info and the session GIF (server.py serves them)

Bad requests raise `RequestError(status, one line)`; model calls are serialised by one lock.

The policy hook (the agent phase plugs in here): when `<dirname(dynamics workdir)>/agent`
exists (RUN/agent for a pipeline workdir), `dreamer4.evaluation.wm_policy.load_policy(agent_workdir,
action_spec=..., num_latents=..., latent_dim=...)` is called once and must return
`policy_fn(z_TNL, rng) -> action`, where z_TNL (float32 numpy [T, N, L]) holds the latents of the
context and generated frames so far (the last one is the current frame, at most the model's window)
and the action is an int32 array [Ad] of the spec's discrete columns, a dict with "discrete"
[Ad] and/or "continuous" [Ac], or an `Action` (data_pipelines/envs/base.py) with those fields.
Without that folder or function the page's "policy acts" toggle is disabled and shows the reason.
Whatever the request or the policy gives becomes an `Action` of a batch of one here (`_row`),
the type the world model takes.
"""

from __future__ import annotations

import base64
import collections
import dataclasses
import importlib
import io
import json
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from dreamer4.errors import UserError

POLICY_HOOK = "dreamer4.evaluation.wm_policy"  # its load_policy(agent_workdir, ...) (module docstring)

MAX_RECORDED_FRAMES = 3000  # frames kept for the session GIF (later frames are not recorded)
RESET_HINT = "press Reset (POST /api/reset) first"

# Keys for actions whose label names a direction (toy world, Craftax): arrows and WASD.
NAMED_KEYS = {
  "up": ("ArrowUp", "w"),
  "down": ("ArrowDown", "s"),
  "left": ("ArrowLeft", "a"),
  "right": ("ArrowRight", "d"),
  "noop": (" ",),
}
# Every other action takes the next free key from this pool, in order.
KEY_POOL = tuple("1234567890") + tuple("qetyuiopfghjklzxcvbnm") + ("[", "]", ";", "'", ",", ".", "/", "-", "=")


# ---------------------------------------------------------------------- locating a run


@dataclasses.dataclass(frozen=True)
class RunPaths:
  """Where the parts of one trained world model live.

  Attributes:
    workdir: the --workdir given (pipeline or dynamics workdir).
    dynamics: the dynamics workdir (holds config.json and checkpoints/).
    config: the dynamics run's config.json, as a dict.
    tokenizer: the frozen tokenizer's workdir.
    data: the EpisodeStore (with the encode job's latents).
    agent: where an agent workdir would be (may not exist).
  """

  workdir: str
  dynamics: str
  config: dict
  tokenizer: str
  data: str
  agent: str


def _read_json(path: str) -> dict | None:
  try:
    with open(path) as f:
      value = json.load(f)
  except (OSError, ValueError):
    return None
  return value if isinstance(value, dict) else None


def checkpoint_steps(directory: str) -> list[int]:
  """Finished Orbax steps in `directory` (folders named by a step number; temporaries excluded)."""
  try:
    names = os.listdir(directory)
  except OSError:
    return []
  return sorted(int(n) for n in names if n.isdigit() and os.path.isdir(os.path.join(directory, n)))


def _resolve(recorded: str, dynamics_dir: str, what: str, flag: str) -> str:
  """A path recorded in a config, as written; else the same name beside the dynamics workdir.

  Pipelines record paths relative to the directory they were launched from
  (e.g. runs/toy/data): from another directory the sibling of `dynamics/` is the same folder.
  """
  if not recorded:
    raise UserError(f"{flag}: the dynamics config {dynamics_dir}/config.json names no {what}; pass {flag}=PATH")
  if "://" in recorded or os.path.exists(recorded):
    return recorded
  sibling = os.path.join(os.path.dirname(os.path.abspath(dynamics_dir)), os.path.basename(recorded.rstrip("/")))
  if os.path.exists(sibling):
    return sibling
  raise UserError(
    f"{flag}: the {what} {recorded!r} named by {dynamics_dir}/config.json does not exist "
    f"(nor {sibling}); pass {flag}=PATH"
  )


def locate_run(workdir: str | None, data: str | None = None, tokenizer: str | None = None) -> RunPaths:
  """Finds the dynamics run in a pipeline workdir (RUN/dynamics) or a dynamics workdir.

  Raises:
    UserError: one line naming the flag and the fix; nothing is written.
  """
  hint = "e.g. --workdir=runs/toy (a pipeline workdir) or --workdir=runs/toy/dynamics"
  if not workdir:
    raise UserError(f"--workdir is required: the run to play in, {hint}")
  if not os.path.isdir(workdir):
    raise UserError(f"--workdir={workdir} does not exist; name a trained run, {hint}")
  dyn_dir, config = None, None
  for cand in (workdir, os.path.join(workdir, "dynamics")):
    cfg = _read_json(os.path.join(cand, "config.json"))
    if cfg is not None and cfg.get("phase") == "dynamics":
      dyn_dir, config = cand, cfg
      break
  if dyn_dir is None:
    raise UserError(
      f"--workdir={workdir} holds no dynamics run (no config.json of phase 'dynamics' in it or in its "
      f"dynamics/ folder); train one with python -m dreamer4.main --config=configs/pipeline.py:toy "
      f"--workdir={workdir}, or name the dynamics workdir"
    )
  if not checkpoint_steps(os.path.join(dyn_dir, "checkpoints")):
    raise UserError(
      f"--workdir={workdir} holds no dynamics checkpoint ({os.path.join(dyn_dir, 'checkpoints')} is empty "
      f"or missing); finish the dynamics training first (rerun the command that started it: it resumes)"
    )
  data_path = data or _resolve(str(config.get("data", {}).get("path", "")), dyn_dir, "dataset", "--data")
  tok_path = tokenizer or _resolve(
    str(config.get("tokenizer_workdir", "")), dyn_dir, "tokenizer workdir", "--tokenizer"
  )
  agent = os.path.join(os.path.dirname(os.path.abspath(dyn_dir)), "agent")
  return RunPaths(workdir=workdir, dynamics=dyn_dir, config=config, tokenizer=tok_path, data=data_path, agent=agent)


# ---------------------------------------------------------------------- keys and actions


@dataclasses.dataclass(frozen=True)
class Binding:
  """Keyboard keys (KeyboardEvent.key values) that take one action for one step.

  Attributes:
    keys: the keys (letters lower case).
    name: the action's name on the page and in POST /api/step {"action": name}.
    column: which column of actions_discrete this action sets.
    value: the value it sets (a class index, or 1 for a binary bit).
  """

  keys: tuple[str, ...]
  name: str
  column: int
  value: int

  def to_json(self) -> dict:
    return {"keys": list(self.keys), "action": self.name, "column": self.column, "value": self.value}


def key_bindings(action_spec) -> list[Binding]:
  """Keys for every discrete class and binary bit of the spec.

  Labels that name a direction get arrows and WASD (noop gets space); every other action takes
  the next key of KEY_POOL (digits first). An action of a multi-component spec sets its own
  column and leaves the others at 0 (the null action) for that step. Continuous components are
  held at 0 (no keyboard mapping).
  """
  multi = sum(c.kind != "continuous" for c in action_spec.components) > 1
  planned: list[tuple[str, int, int, tuple[str, ...]]] = []
  column = 0
  for comp in action_spec.components:
    if comp.kind == "continuous":
      continue
    if comp.kind == "discrete":
      for v in range(comp.size):
        label = comp.labels[v] if v < len(comp.labels) else str(v)
        name = f"{comp.name}={label}" if multi or not comp.labels else label
        planned.append((name, column, v, NAMED_KEYS.get(label.lower(), ()) if comp.labels else ()))
      column += 1
    else:  # binary: one key per bit, that bit on for one step
      for b in range(comp.size):
        label = comp.labels[b] if b < len(comp.labels) else str(b)
        planned.append((f"{comp.name}:{label}", column + b, 1, ()))
      column += comp.size
  used = {k for *_, keys in planned for k in keys}
  pool = [k for k in KEY_POOL if k not in used]
  out = []
  for name, col, value, keys in planned:
    if not keys:
      keys = (pool.pop(0),) if pool else ()
    out.append(Binding(tuple(keys), name, col, value))
  return out


def normalise_key(key: str) -> str:
  return key.lower() if len(key) == 1 else key


# ---------------------------------------------------------------------- the session


class RequestError(Exception):
  """A bad request: HTTP status and a one-line message."""

  def __init__(self, status: int, message: str):
    super().__init__(message)
    self.status = status


def _to_image(frame_HWC, Image):
  import numpy as np

  a = np.asarray(frame_HWC)
  if a.ndim == 3 and a.shape[-1] == 1:
    a = a[..., 0]
  return Image.fromarray(a)


def _png_bytes(frame_HWC) -> bytes:
  from PIL import Image

  buf = io.BytesIO()
  _to_image(frame_HWC, Image).save(buf, format="PNG")
  return buf.getvalue()


def data_url(frame_HWC) -> str:
  return "data:image/png;base64," + base64.b64encode(_png_bytes(frame_HWC)).decode("ascii")


def find_policy(paths: RunPaths, action_spec, num_latents: int, latent_dim: int) -> tuple[Callable | None, str]:
  """(policy_fn, "") through the agent hook (module docstring), or (None, why not)."""
  if not os.path.isdir(paths.agent):
    return None, (
      f"no agent checkpoint: {paths.agent} does not exist (train the agent phase into it; "
      f"see dreamer4/play/session.py for the hook)"
    )
  load = getattr(importlib.import_module(POLICY_HOOK), "load_policy", None)
  if load is None:
    return None, f"{POLICY_HOOK} has no load_policy(agent_workdir, ...) hook"
  try:
    return load(paths.agent, action_spec=action_spec, num_latents=num_latents, latent_dim=latent_dim), ""
  except Exception as e:  # noqa: BLE001 -- a broken agent must not stop a person from playing
    line = (str(e).strip().splitlines() or [type(e).__name__])[-1]
    return None, f"the agent in {paths.agent} could not be loaded: {line}"


class PlaySession:
  """The loaded world model and one person's session (thread-safe: one lock around model calls).

  Args:
    paths: from `locate_run`.
    k: shortcut steps per generated frame (a power of two <= the model's k_max).
    context_noise: noise share of history frames ([P §3.2]: 0.1).
    seed: base seed; a session's keys come from key(seed + the reset's seed).
    policy: a policy_fn to use instead of the agent hook (see module docstring); None: the hook.
    warmup: compile reset and step now (on the first usable episode) rather than on first use.
  """

  def __init__(
    self,
    paths: RunPaths,
    *,
    k: int = 4,
    context_noise: float = 0.1,
    seed: int = 0,
    policy: Callable | None = None,
    warmup: bool = True,
  ):
    import jax
    import ml_collections
    import numpy as np

    from data_pipelines.episodes import EpisodeStore, StoreError
    from dreamer4 import runs
    from dreamer4 import sharding as shd
    from dreamer4.errors import CheckpointError, ConfigError
    from dreamer4.inference.world import World

    self.paths = paths
    self._lock = threading.Lock()
    try:
      store = EpisodeStore.open(paths.data)
    except StoreError as e:
      raise UserError(f"--data: {e}") from None
    self.store = store
    cfg = runs.upgrade_config(ml_collections.ConfigDict(paths.config), "dynamics")  # keys added since it ran
    # One device: play is one person, one frame at a time.
    mesh = shd.make_mesh(ml_collections.ConfigDict({"preset": "data", "shape": (1, 1, 1)}), jax.devices()[:1])
    tcfg, tok_def, tok_params, tok_step = runs.load_tokenizer(paths.tokenizer, mesh, store.frame_shape)
    # The run may have moved as a whole: latents recorded under the tokenizer's old path count.
    attrs = runs.check_latents(store, paths.tokenizer, tok_step, tcfg, prefix="--data: ", match_workdir=False)
    N, L = attrs["num_latents"], attrs["latent_dim"]
    spec = store.action_spec
    try:
      dyn_def = runs.dynamics_model_def(cfg.model, N, L, spec)
    except ConfigError as e:
      raise CheckpointError(f"--workdir: the dynamics config cannot be built for dataset {paths.data}: {e}") from None
    self.dynamics_step, dyn_params = runs.restore_model(paths.dynamics, dyn_def, mesh)
    self.tokenizer_step = tok_step
    device = jax.devices()[0]
    model = dyn_def.merge(jax.device_put(jax.device_get(dyn_params), device))
    tokenizer = tok_def.merge(jax.device_put(jax.device_get(tok_params), device))
    window = int(model.context) or int(cfg.data.long_window or cfg.data.window)
    try:
      self.world = World(model, tokenizer, k=k, context_noise=context_noise, window=window)
    except ValueError as e:  # k not a power of two, or above the model's k_max
      raise UserError(f"--k={k}: {e}") from None
    self.k, self.context_noise = int(k), float(context_noise)
    self.action_spec = spec
    self.context_frames = max(1, self.world.window - 1)  # what the cache holds; more would be dropped
    self.num_latents, self.latent_dim = N, L
    self.bindings = key_bindings(spec)
    self._by_key = {normalise_key(k): b for b in self.bindings for k in b.keys}
    self._by_name = {b.name: b for b in self.bindings}
    self.fps = int(store.metadata.get("fps", 15))
    self.frame_shape = tuple(store.frame_shape)
    self.episode_lengths = store.episode_lengths
    self.offsets = store.episode_offsets
    _, held_out = store.split(float(cfg.data.eval_fraction), seed=int(cfg.data.split_seed))
    self.held_out = [int(e) for e in held_out]
    if policy is not None:
      self.policy, self.policy_reason = policy, ""
    else:
      self.policy, self.policy_reason = find_policy(paths, spec, N, L)
    self._seed = int(seed)
    self._np = np
    self._jax = jax
    self._state = None
    self._recorded: list = []
    self._z_hist: collections.deque = collections.deque(maxlen=self.world.window)
    self._t = 0
    self._key = self._policy_key = None
    self.session_info: dict = {}
    usable = [e for e in range(store.num_episodes) if self.episode_lengths[e] >= self.context_frames]
    if not usable:
      raise UserError(f"--data: no episode of {paths.data} has the {self.context_frames} frames a context needs")
    # The page starts on the first held-out episode long enough for a context.
    self.default_episode = next((e for e in self.held_out if e in usable), usable[0])
    if warmup:  # compile both jitted functions now; the first key press is then fast
      self.reset(self.default_episode, 0)
      self.step({"action": self.bindings[0].name} if self.bindings else {})
      with self._lock:
        self._state, self._recorded, self._t = None, [], 0
        self._z_hist.clear()

  # -------------------------------------------------------------------- helpers

  def set_policy(self, policy: Callable | None, reason: str = "") -> None:
    """Replaces the policy (None disables the toggle, with `reason` shown on the page)."""
    with self._lock:
      self.policy, self.policy_reason = policy, ("" if policy is not None else reason or "no policy")

  def info(self) -> dict:
    order = self.held_out + [e for e in range(len(self.episode_lengths)) if e not in set(self.held_out)]
    return {
      "frame_shape": list(self.frame_shape),
      "fps": self.fps,
      "context_frames": self.context_frames,
      "default_episode": self.default_episode,
      "k": self.k,
      "context_noise": self.context_noise,
      "episodes": [{"id": e, "length": int(self.episode_lengths[e]), "held_out": e in self.held_out} for e in order],
      "bindings": [b.to_json() for b in self.bindings],
      "policy": {"available": self.policy is not None, "reason": self.policy_reason},
      "run": {
        "workdir": self.paths.workdir,
        "dynamics": self.paths.dynamics,
        "dynamics_step": self.dynamics_step,
        "tokenizer": self.paths.tokenizer,
        "tokenizer_step": self.tokenizer_step,
        "data": self.paths.data,
      },
      "started": self._state is not None,
      "session": self.session_info,
      "max_recorded_frames": MAX_RECORDED_FRAMES,
    }

  def _row(self, discrete=None, continuous=None):
    """One frame's labelled Action for a batch of one (fixed dtypes and shapes: the step never
    recompiles). A part the spec has no columns for is zero-width, whatever was given for it."""
    from data_pipelines.envs.base import Action

    np = self._np
    spec = self.action_spec
    Ad, Ac = spec.discrete_columns, spec.continuous_columns
    d = np.zeros((Ad,), np.int32) if discrete is None or not Ad else np.asarray(discrete, np.int32)
    c = np.zeros((Ac,), np.float32) if continuous is None or not Ac else np.asarray(continuous, np.float32)
    return Action.labelled_from(d.reshape(1, Ad), c.reshape(1, Ac))

  def _action_from_request(self, body: dict):
    """(Action [1], its name) for a request body: a key, an action name or the policy."""
    from data_pipelines.envs.base import Action

    np = self._np
    spec = self.action_spec
    if body.get("policy"):
      if self.policy is None:
        raise RequestError(409, f"no policy can act: {self.policy_reason}")
      z_TNL = np.stack(list(self._z_hist)).astype(np.float32)
      a = self.policy(z_TNL, self._jax.random.fold_in(self._policy_key, self._t))
      try:
        if isinstance(a, Action):
          row = self._row(a.discrete, a.continuous)
        elif isinstance(a, dict):
          row = self._row(a.get("discrete"), a.get("continuous"))
        else:
          row = self._row(a)
      except ValueError as e:
        raise RequestError(500, f"the policy returned an action of the wrong shape: {e}") from None
      d = row.discrete[0]
      names = [b.name for b in self.bindings if b.column < len(d) and d[b.column] == b.value and b.value]
      return row, "policy:" + (",".join(names) or ",".join(str(int(x)) for x in d))
    if "key" in body:
      key = body["key"]
      if not isinstance(key, str) or normalise_key(key) not in self._by_key:
        keys = ", ".join(repr(k) for b in self.bindings for k in b.keys)
        raise RequestError(400, f"unknown key {key!r}; mapped keys: {keys}")
      b = self._by_key[normalise_key(key)]
    elif "action" in body:
      name = body["action"]
      if not isinstance(name, str) or name not in self._by_name:
        raise RequestError(400, f"unknown action {name!r}; actions: {', '.join(self._by_name)}")
      b = self._by_name[name]
    else:
      raise RequestError(400, 'give {"key": KEY}, {"action": NAME} or {"policy": true}')
    d = np.zeros((spec.discrete_columns,), np.int32)
    d[b.column] = b.value
    return self._row(d), b.name

  def _record(self, frame_HWC):
    if len(self._recorded) < MAX_RECORDED_FRAMES:
      self._recorded.append(frame_HWC)

  # -------------------------------------------------------------------- API

  def reset(self, episode: Any, start: Any = 0, seed: Any = 0) -> dict:
    """Primes the world with frames [start, start + C) of `episode` (latents and actions)."""
    from data_pipelines.envs.base import Action

    np, jax = self._np, self._jax
    E, C = len(self.episode_lengths), self.context_frames
    for name, v in (("episode", episode), ("start", start), ("seed", seed)):
      if isinstance(v, bool) or not isinstance(v, int):
        raise RequestError(400, f"{name} must be an integer, got {v!r}")
    if not 0 <= episode < E:
      raise RequestError(400, f"episode {episode} is out of range [0, {E})")
    n = int(self.episode_lengths[episode])
    if not 0 <= start <= n - C:
      raise RequestError(
        400,
        f"start {start} is out of range: episode {episode} has {n} frames and a context "
        f"takes {C}, so start must be in [0, {n - C}]",
      )
    lo = int(self.offsets[episode]) + start
    names = ["latents", "frames", "action_labelled"]
    spec = self.action_spec
    if spec.discrete_columns:
      names.append("actions_discrete")
    if spec.continuous_columns:
      names.append("actions_continuous")
    rows = self.store.read_many(names, lo, lo + C)
    actions = Action.from_window({name: rows[name][None] for name in names if name.startswith("action")})
    z_CNL = rows["latents"].astype(np.float32)
    with self._lock:
      reset_key, self._key, self._policy_key = jax.random.split(jax.random.key(self._seed + seed), 3)
      self._state = self.world.reset(z_CNL[None], actions, reset_key)
      self._t = 0
      self._recorded = []
      self._z_hist.clear()
      self._z_hist.extend(list(z_CNL))
      for f in rows["frames"]:
        self._record(f)
      self.session_info = {"episode": episode, "start": start, "seed": seed}
      return {
        "frame": data_url(rows["frames"][-1]),
        "step": 0,
        "episode": episode,
        "start": start,
        "context_frames": C,
        "recorded": len(self._recorded),
      }

  def step(self, body: dict) -> dict:
    """Generates one frame for the action in `body` (see the module docstring)."""
    np, jax = self._np, self._jax
    with self._lock:
      if self._state is None:
        raise RequestError(409, f"no session yet: {RESET_HINT}")
      action, name = self._action_from_request(body)
      t0 = time.perf_counter()
      state, self._state = self._state, None  # donated by World.step: never reuse it
      out, self._state = self.world.step(state, action, jax.random.fold_in(self._key, self._t))
      frame = np.asarray(jax.device_get(out["frame_BHWC"][0]))
      z = np.asarray(jax.device_get(out["z_BNL"][0]))
      gen_ms = (time.perf_counter() - t0) * 1000.0
      self._t += 1
      frame_u8 = (np.clip(frame, 0.0, 1.0) * 255.0).round().astype(np.uint8)
      self._z_hist.append(z)
      self._record(frame_u8)
      return {
        "frame": data_url(frame_u8),
        "step": self._t,
        "action": name,
        "gen_ms": gen_ms,
        "compiles": self.world.step_compiles(),
        "recorded": len(self._recorded),
      }

  def gif(self) -> bytes:
    """The recorded session as an animated GIF (scaled up to at least 256 px, nearest neighbour)."""
    from PIL import Image

    with self._lock:
      frames = list(self._recorded)
    if not frames:
      raise RequestError(409, f"nothing recorded yet: {RESET_HINT}")
    h, w = frames[0].shape[:2]
    scale = max(1, 256 // max(h, w))
    images = [_to_image(f, Image).resize((w * scale, h * scale), Image.NEAREST) for f in frames]
    buf = io.BytesIO()
    images[0].save(
      buf, format="GIF", save_all=True, append_images=images[1:], duration=max(20, int(1000 / max(self.fps, 1))), loop=0
    )
    return buf.getvalue()
