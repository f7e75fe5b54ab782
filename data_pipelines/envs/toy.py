"""ToyWorld: a tiny procedural 2D world in numpy, used for tests and the one-command demo.

The world is a G x G grid (G = 8) drawn at `size` pixels, so every object covers
exactly one cell of `size // G` pixels and frames stay crisp at any size.

- The agent (white) moves one cell per step: noop, up, down, left, right.
- Three goal objects, one of each kind: red square, green diamond, blue ring.
- A few distractor sprites (grey and yellow) bounce around; they are purely
  visual, so a world model must learn that they are not controlled.
- Each episode names one task "reach_<kind>". Stepping onto that kind gives
  reward 1 and ends the episode (terminal). Stepping onto another kind gives
  nothing and respawns that object elsewhere, so wrong goals never block.
- `layout="fixed"` keeps the three goals on fixed cells (FIXED_GOALS) for the
  whole episode and every episode; only the agent's start and the distractors
  vary, and wrong goals are simply walked over. The policy then has to read
  the agent's cell and the task, not compare positions of several objects;
  this is the pipeline's toy default (see configs/pipeline.py for why).
- Episodes also end (truncated, not terminal) after `max_steps` steps.

Everything is deterministic given the reset seed. Rendering is a background copy
plus one slice assignment per sprite, which keeps it at tens of thousands of
frames per second on one core.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from data_pipelines.envs.base import ActionComponent, ActionSpec

GRID = 8
KIND_NAMES = ("red", "green", "blue")
KIND_COLOURS = np.array([[230, 40, 40], [40, 210, 60], [50, 90, 240]], np.uint8)
AGENT_COLOUR = np.array([245, 245, 245], np.uint8)
DISTRACTOR_COLOURS = np.array([[150, 150, 150], [230, 210, 40], [160, 90, 200]], np.uint8)
# (dy, dx) per action: noop, up, down, left, right.
MOVES = np.array([[0, 0], [-1, 0], [1, 0], [0, -1], [0, 1]], np.int64)
ACTION_LABELS = ("noop", "up", "down", "left", "right")
# Per action: what the world-model probe (dreamer4/evaluation/probe.py) pools it with.
ACTION_GROUPS = ("noop", "vertical", "vertical", "horizontal", "horizontal")
# Goal cells (y, x) of red, green, blue under layout="fixed": three corners' neighbourhoods,
# far enough apart that a greedy path to one rarely crosses another.
FIXED_GOALS = np.array([[1, 1], [1, 6], [6, 3]], np.int64)
LAYOUTS = ("random", "fixed")


def _shape_masks(cell: int) -> list[np.ndarray]:
  """Boolean [cell, cell] masks: square, diamond, ring, agent (plus), distractor (dot).

  Shapes are defined on a unit square so they scale with the cell size; at tiny
  cells (2 px) they degrade to blocks but colours still tell kinds apart.
  """
  c = (np.arange(cell) + 0.5) / cell - 0.5
  y_CC, x_CC = np.meshgrid(c, c, indexing="ij")
  r_CC = np.sqrt(y_CC**2 + x_CC**2)
  square = (np.abs(y_CC) < 0.4) & (np.abs(x_CC) < 0.4)
  diamond = (np.abs(y_CC) + np.abs(x_CC)) < 0.5
  ring = (r_CC < 0.48) & (r_CC > 0.2)
  plus = (np.abs(y_CC) < 0.17) | (np.abs(x_CC) < 0.17)
  dot = r_CC < 0.35
  masks = [square, diamond, ring, plus, dot]
  # Never draw an empty sprite (possible for cell sizes of 1-2 px).
  return [m if m.any() else np.ones_like(m) for m in masks]


class ToyWorld:
  """Procedural grid world implementing the `Env` protocol.

  Args:
    size: frame height and width in pixels; a multiple of 8 (the grid size).
    max_steps: steps after which an episode is truncated (frames = steps + 1).
    num_distractors: number of bouncing distractor sprites (0 to 3).
    layout: "random" (goals placed anew each episode, wrong goals respawn) or "fixed"
      (goals on FIXED_GOALS always; the agent starts on a random other cell).
  """

  name = "toy"
  fps = 15
  task_names = tuple(f"reach_{k}" for k in KIND_NAMES)
  action_spec = ActionSpec((ActionComponent("move", "discrete", 5, ACTION_LABELS),))

  def __init__(self, size: int = 64, max_steps: int = 64, num_distractors: int = 2, layout: str = "random"):
    if size < GRID or size % GRID:
      raise ValueError(f"ToyWorld: size must be a positive multiple of {GRID}, got {size}")
    if max_steps < 1:
      raise ValueError(f"ToyWorld: max_steps must be >= 1, got {max_steps}")
    if not 0 <= num_distractors <= len(DISTRACTOR_COLOURS):
      raise ValueError(f"ToyWorld: num_distractors must be in [0, {len(DISTRACTOR_COLOURS)}], got {num_distractors}")
    if layout not in LAYOUTS:
      raise ValueError(f"ToyWorld: layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    self.size = size
    self.layout = layout
    self.max_steps = max_steps
    self.num_distractors = num_distractors
    self.frame_shape = (size, size, 3)
    self._cell = size // GRID
    self._build_sprites()
    self._rng = None  # set by reset; step before reset is an error
    self.task = 0
    self.steps = 0

  def _build_sprites(self):
    """Precomputes the background and each sprite as (mask [c,c,1], colour tile [c,c,3])."""
    c = self._cell
    # A faint checkerboard gives the world model a static texture to reproduce.
    checker_GG = (np.add.outer(np.arange(GRID), np.arange(GRID)) % 2).astype(np.uint8)
    bg_GG = 24 + 10 * checker_GG
    self._background_HWC = np.repeat(np.repeat(bg_GG, c, 0), c, 1)[..., None].repeat(3, -1).astype(np.uint8)
    square, diamond, ring, plus, dot = _shape_masks(c)

    def sprite(mask, colour):
      return mask[..., None], np.broadcast_to(colour, (c, c, 3)).astype(np.uint8)

    self._goal_sprites = [sprite(m, col) for m, col in zip((square, diamond, ring), KIND_COLOURS)]
    self._agent_sprite = sprite(plus, AGENT_COLOUR)
    self._distractor_sprites = [sprite(dot, col) for col in DISTRACTOR_COLOURS]

  # ------------------------------------------------------------------ state

  def reset(self, seed: int, task: int | None = None) -> tuple[np.ndarray, int]:
    """Starts an episode; returns (first frame uint8 [H,W,3], task id)."""
    self._rng = np.random.default_rng(seed)
    self.task = int(self._rng.integers(len(KIND_NAMES))) if task is None else int(task)
    if not 0 <= self.task < len(KIND_NAMES):
      raise ValueError(f"ToyWorld: task must be in [0, {len(KIND_NAMES)}), got {task}")
    if self.layout == "fixed":
      free = np.ones(GRID * GRID, bool)
      free[FIXED_GOALS[:, 0] * GRID + FIXED_GOALS[:, 1]] = False
      self.agent_yx = np.array(divmod(int(self._rng.choice(np.flatnonzero(free))), GRID))
      self.goals_K2 = FIXED_GOALS.copy()
    else:
      cells = self._rng.choice(GRID * GRID, size=1 + len(KIND_NAMES), replace=False)
      yx = np.stack(np.divmod(cells, GRID), -1)
      self.agent_yx = yx[0]
      self.goals_K2 = yx[1:].copy()  # row k holds the cell of the goal of kind k
    self.distractors_D2 = self._rng.integers(0, GRID, size=(self.num_distractors, 2))
    # Diagonal velocities of +-1 per axis so distractors sweep the whole grid.
    self.velocities_D2 = self._rng.choice(np.array([-1, 1]), size=(self.num_distractors, 2))
    self.steps = 0
    return self.render(), self.task

  def step(self, action: Any) -> tuple[np.ndarray, float, bool, dict[str, Any]]:
    """Applies a discrete action (int or int32 [1]); returns (frame, reward, done, info).

    info holds "terminal" (True only on success, so a truncation can bootstrap),
    "success" and "task".
    """
    if self._rng is None:
      raise RuntimeError("ToyWorld.step called before reset")
    a = int(np.asarray(action).reshape(-1)[0])
    if not 0 <= a < len(MOVES):
      raise ValueError(f"ToyWorld: action must be in [0, {len(MOVES)}), got {a}")
    self.agent_yx = np.clip(self.agent_yx + MOVES[a], 0, GRID - 1)
    self._move_distractors()
    self.steps += 1
    reward, success = 0.0, False
    hit = np.flatnonzero((self.goals_K2 == self.agent_yx).all(-1))
    for kind in hit:
      if kind == self.task:
        reward, success = 1.0, True
      elif self.layout == "random":
        self.goals_K2[kind] = self._free_cell()
    done = success or self.steps >= self.max_steps
    return self.render(), reward, done, {"terminal": success, "success": success, "task": self.task}

  def _move_distractors(self):
    pos = self.distractors_D2 + self.velocities_D2
    out = (pos < 0) | (pos >= GRID)
    self.velocities_D2 = np.where(out, -self.velocities_D2, self.velocities_D2)
    self.distractors_D2 = np.where(out, self.distractors_D2 + self.velocities_D2, pos)

  def _free_cell(self) -> np.ndarray:
    """A random cell holding neither the agent nor a goal (distractors are ignored)."""
    taken = np.zeros((GRID, GRID), bool)
    taken[self.agent_yx[0], self.agent_yx[1]] = True
    taken[self.goals_K2[:, 0], self.goals_K2[:, 1]] = True
    free = np.flatnonzero(~taken.reshape(-1))
    return np.array(divmod(int(self._rng.choice(free)), GRID))

  def greedy_action(self) -> int:
    """The action that moves the agent one cell toward the nearest goal of the task kind.

    The goal of each kind is unique, so "nearest" is that goal; ties between the
    axes go to the axis with the larger distance, then to the vertical one.
    """
    dy, dx = self.goals_K2[self.task] - self.agent_yx
    if dy == 0 and dx == 0:
      return 0
    if abs(dy) >= abs(dx):
      return 2 if dy > 0 else 1
    return 4 if dx > 0 else 3

  # ------------------------------------------------------------------ drawing

  def _paste(self, frame_HWC: np.ndarray, yx: np.ndarray, sprite) -> None:
    mask, tile = sprite
    c = self._cell
    y, x = int(yx[0]) * c, int(yx[1]) * c
    view = frame_HWC[y : y + c, x : x + c]
    np.copyto(view, tile, where=mask)

  def render(self) -> np.ndarray:
    """Draws the current state; distractors first so goals and agent stay visible."""
    frame_HWC = self._background_HWC.copy()
    for d in range(self.num_distractors):
      self._paste(frame_HWC, self.distractors_D2[d], self._distractor_sprites[d])
    for k in range(len(KIND_NAMES)):
      self._paste(frame_HWC, self.goals_K2[k], self._goal_sprites[k])
    self._paste(frame_HWC, self.agent_yx, self._agent_sprite)
    return frame_HWC


class ScriptedPolicy:
  """A behaviour policy of tunable quality for collecting mixed-quality data.

  With probability `skill` it takes the env's greedy step toward the task goal,
  otherwise a uniformly random action, so skill=1 is near-expert and skill=0 is
  random.

  Args:
    skill: probability in [0, 1] of acting greedily.
    seed: seed of the policy's own random stream (independent of the env's).
  """

  def __init__(self, skill: float, seed: int):
    if not 0.0 <= skill <= 1.0:
      raise ValueError(f"ScriptedPolicy: skill must be in [0, 1], got {skill}")
    self.skill = float(skill)
    self._rng = np.random.default_rng(seed)

  def __call__(self, env: ToyWorld) -> np.ndarray:
    """Returns the next action as int32 [1] (the env's discrete action layout)."""
    if self._rng.random() < self.skill:
      a = env.greedy_action()
    else:
      a = int(self._rng.integers(len(MOVES)))
    return np.array([a], np.int32)
