r"""Craftax-Classic behind the project's env interface, plus a scripted expert and a batched collector.

The world is `Craftax-Classic-Pixels-v1` (craftax 1.6.1, pure JAX). Its 63x63
float pixels are resized with `jax.image.resize` (bilinear) to `size` x `size`
and stored as uint8.

- Actions: the env's 17 discrete actions, one discrete component "action".
- Rewards: +1 per achievement unlocked at a step (the env's own health-change
  term is dropped), so an episode's return is the number of achievements it got.
- Tasks: the 22 achievement names. An episode's task id is the achievement the
  behaviour policy was told to reach: the scripted expert climbs the tech tree
  (wood, table, wooden pickaxe and sword, stone, placed stone, stone pickaxe and
  sword, furnace, coal, iron, iron pickaxe and sword, diamond) and stops
  climbing once it holds that achievement (then it keeps itself alive, plants
  saplings and wanders). Random-play episodes carry a task id too; the policy
  ignores it.
- Episodes end when the player dies (lava, health) or after `max_steps` steps.

The expert reads the symbolic state (map, mobs, inventory, intrinsics); it
plans on a (2R+1)^2 window around the player with a few rounds of min-plus
distance relaxation: it walks toward the nearest target block, digs through
stone when it holds a pickaxe, and acts when it faces the target. Its `skill`
is the probability of taking its own action rather than a uniformly random one.

Collection is batched in JAX: `jit(vmap(...))` over `num_envs` envs and
`lax.scan` over chunks of steps, with the env's auto-reset off. Worlds for new
episodes are generated in batches ahead of time, and a slot whose episode ended
picks up a fresh world at the next chunk boundary, so no world is regenerated
per step.

Reproducibility: episode k of a collection with base seed s uses the env seed
of `collect._episode_seeds(s, k)`; `CraftaxClassic.reset(env_seed)` followed by
the stored actions replays the stored frames and rewards exactly.

The first use of craftax processes its textures (about 30 s on 2 cores) and
caches them inside the installed craftax package (site-packages must be
writable); later processes load the cache.
"""

from __future__ import annotations

import functools
import time
from typing import Any, Callable, Sequence

import numpy as np

from data_pipelines.envs.base import ActionComponent, ActionSpec

ACTION_NAMES = (
    "noop", "left", "right", "up", "down", "do", "sleep", "place_stone", "place_table", "place_furnace",
    "place_plant", "make_wood_pickaxe", "make_stone_pickaxe", "make_iron_pickaxe", "make_wood_sword",
    "make_stone_sword", "make_iron_sword",
)
# Index order of craftax_classic.constants.Achievement (checked by the tests).
ACHIEVEMENT_NAMES = (
    "collect_wood", "place_table", "eat_cow", "collect_sapling", "collect_drink", "make_wood_pickaxe",
    "make_wood_sword", "place_plant", "defeat_zombie", "collect_stone", "place_stone", "eat_plant",
    "defeat_skeleton", "make_stone_pickaxe", "make_stone_sword", "wake_up", "place_furnace", "collect_coal",
    "collect_iron", "collect_diamond", "make_iron_pickaxe", "make_iron_sword",
)
ACH = {n: i for i, n in enumerate(ACHIEVEMENT_NAMES)}
ACT = {n: i for i, n in enumerate(ACTION_NAMES)}

# craftax_classic.constants.BlockType values.
OUT, GRASS, WATER, STONE, TREE, WOOD, PATH, COAL, IRON, DIAMOND, TABLE, FURNACE, SAND, LAVA, PLANT, RIPE = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16)
WALKABLE = (GRASS, SAND, PATH)

# The tech tree the expert climbs, in order: (achievement, wood, stone, coal, iron, needs table, needs furnace,
# final action). Resource stages ("collect_*") have final action "do" at the matching block.
STAGES = (
    ("collect_wood", 0, 0, 0, 0, False, False, "do"),
    ("place_table", 2, 0, 0, 0, False, False, "place_table"),
    ("make_wood_pickaxe", 1, 0, 0, 0, True, False, "make_wood_pickaxe"),
    ("make_wood_sword", 1, 0, 0, 0, True, False, "make_wood_sword"),
    ("collect_stone", 0, 0, 0, 0, False, False, "do"),
    ("place_stone", 0, 1, 0, 0, False, False, "place_stone"),
    ("make_stone_pickaxe", 1, 1, 0, 0, True, False, "make_stone_pickaxe"),
    ("make_stone_sword", 1, 1, 0, 0, True, False, "make_stone_sword"),
    ("place_furnace", 0, 1, 0, 0, True, False, "place_furnace"),
    ("collect_coal", 0, 0, 0, 0, False, False, "do"),
    ("collect_iron", 0, 0, 0, 0, False, False, "do"),
    ("make_iron_pickaxe", 1, 1, 1, 1, True, True, "make_iron_pickaxe"),
    ("make_iron_sword", 1, 1, 1, 1, True, True, "make_iron_sword"),
    ("collect_diamond", 0, 0, 0, 0, False, False, "do"),
)
STAGE_ACHIEVEMENTS = tuple(ACH[s[0]] for s in STAGES)
# Stage index -> navigation target of its "do" (resource stages only); -1 elsewhere.
_STAGE_BLOCK = {"collect_wood": TREE, "collect_stone": STONE, "collect_coal": COAL, "collect_iron": IRON,
                "collect_diamond": DIAMOND}
# Spare wood carried for re-placing tables near distant stone/iron (two tables' worth).
SPARE_WOOD = 4
WINDOW_RADIUS = 10  # planning window is (2R+1)^2 cells around the player
PLAN_ITERS = 24  # min-plus relaxation rounds (longest planned path)
TABLE_REACH = 6  # a table within this Manhattan distance is walked to rather than re-placed
INF = 1e4
# XLA:CPU options for programs whose compile time dominates their run time.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}

# Direction actions and their (drow, dcol), as craftax_classic.constants.DIRECTIONS.
_MOVES = ((1, 0, -1), (2, 0, 1), (3, -1, 0), (4, 1, 0))


def default_goal_probs() -> np.ndarray:
  """Distribution of the expert's goal stage: half "collect_diamond", the rest uniform over earlier stages."""
  p = np.full((len(STAGES),), 0.5 / (len(STAGES) - 1))
  p[-1] = 0.5
  return p


# ---------------------------------------------------------------------------- env functions (jax)


@functools.lru_cache(maxsize=None)
def _craftax_fns(size: int, max_steps: int) -> dict[str, Callable[..., Any]]:
  """Pure single-env functions (reset, step, expert), built once per (size, max_steps)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from craftax.craftax_env import make_craftax_env_from_name  # pylint: disable=g-import-not-at-top

  env = make_craftax_env_from_name("Craftax-Classic-Pixels-v1", auto_reset=False)
  params = env.default_params.replace(max_timesteps=max_steps)

  def to_uint8(obs_HWC):
    if obs_HWC.shape[:2] != (size, size):
      obs_HWC = jax.image.resize(obs_HWC, (size, size, obs_HWC.shape[-1]), method="linear")
    return jnp.clip(jnp.round(obs_HWC * 255.0), 0, 255).astype(jnp.uint8)

  def reset(key):
    """key -> (frame uint8 [H,W,3], env state)."""
    obs, state = env.reset_env(key, params)
    # World generation leaves player_direction weakly typed, step does not: without this the
    # rollout program compiles twice (first chunk, then every later one).
    state = state.replace(player_direction=jnp.asarray(state.player_direction, jnp.int32))
    return to_uint8(obs), state

  def step(state, action, key):
    """-> (frame, state, unlocked bool [22], done, died)."""
    obs, new_state, _, done, _ = env.step_env(key, state, action, params)
    unlocked = jnp.logical_and(new_state.achievements, jnp.logical_not(state.achievements))
    died = jnp.logical_and(done, new_state.timestep < max_steps)
    return to_uint8(obs), new_state, unlocked, done, died

  return {"reset": reset, "step": step, "expert": _make_expert(jax, jnp), "params": params}


def _make_expert(jax, jnp):
  """Builds `expert(state, pstate, goal, skill, key) -> (action, pstate)` (single env, pure)."""
  r = WINDOW_RADIUS
  side = 2 * r + 1
  stage_ach = jnp.array(STAGE_ACHIEVEMENTS, jnp.int32)
  req = jnp.array([s[1:5] for s in STAGES], jnp.int32)  # [S, 4] wood, stone, coal, iron
  need_table = jnp.array([s[5] for s in STAGES])
  need_furnace = jnp.array([s[6] for s in STAGES])
  final_action = jnp.array([ACT[s[7]] for s in STAGES], jnp.int32)
  stage_block = jnp.array([_STAGE_BLOCK.get(s[0], -1) for s in STAGES], jnp.int32)
  is_place = jnp.array([s[7].startswith("place_") for s in STAGES])
  move_actions = jnp.array([m[0] for m in _MOVES], jnp.int32)
  move_d = jnp.array([m[1:] for m in _MOVES], jnp.int32)  # [4, 2]
  walkable = jnp.zeros((17,), bool).at[jnp.array(WALKABLE)].set(True)

  def window(state):
    padded = jnp.pad(state.map, r, constant_values=OUT)
    return jax.lax.dynamic_slice(padded, (state.player_position[0], state.player_position[1]), (side, side))

  def mob_mask(state, mobs):
    rel = mobs.position - state.player_position + r
    ok = mobs.mask & jnp.all((rel >= 0) & (rel < side), axis=-1)
    rel = jnp.where(ok[:, None], rel, side)  # out of range -> dropped
    return jnp.zeros((side, side), bool).at[rel[:, 0], rel[:, 1]].set(True, mode="drop")

  def plan(target_SS, cost_SS):
    """Min-plus distance to the nearest target (0 on targets); cost INF cells are impassable."""
    dist = jnp.where(target_SS, 0.0, INF)

    def relax(_, d):
      p = jnp.pad(d, 1, constant_values=INF)
      nb = jnp.minimum(jnp.minimum(p[:-2, 1:-1], p[2:, 1:-1]), jnp.minimum(p[1:-1, :-2], p[1:-1, 2:]))
      return jnp.minimum(d, jnp.minimum(nb + cost_SS, INF))

    return jax.lax.fori_loop(0, PLAN_ITERS, relax, dist)

  def expert(state, pstate, goal, skill, key):
    inv = state.inventory
    have = jnp.array([inv.wood, inv.stone, inv.coal, inv.iron], jnp.int32)
    ach = state.achievements
    k_tie, k_dir, k_eps, k_act, k_turn = jax.random.split(key, 5)
    w = window(state)
    c = r  # player cell in the window
    cows = mob_mask(state, state.cows)
    zombies = mob_mask(state, state.zombies) | mob_mask(state, state.skeletons)
    mobs = cows | zombies
    nb_yx = c + move_d  # [4, 2]
    nb_block = w[nb_yx[:, 0], nb_yx[:, 1]]
    nb_mob = mobs[nb_yx[:, 0], nb_yx[:, 1]]
    nb_free = walkable[nb_block] & ~nb_mob
    facing = jnp.argmax(move_actions == state.player_direction)  # index into _MOVES
    facing_block, facing_free = nb_block[facing], nb_free[facing]
    # 8-neighbourhood (what crafting checks).
    ring = jax.lax.dynamic_slice(w, (c - 1, c - 1), (3, 3))
    near_table = jnp.any(ring == TABLE)
    near_furnace = jnp.any(ring == FURNACE)
    yy, xx = jnp.meshgrid(jnp.arange(side) - c, jnp.arange(side) - c, indexing="ij")
    manhattan = jnp.abs(yy) + jnp.abs(xx)
    table_close = jnp.any((w == TABLE) & (manhattan <= TABLE_REACH))

    # ---- the tech-tree stage: first stage (up to the goal) whose achievement is missing.
    stage_done = ach[stage_ach]
    todo = (~stage_done) & (jnp.arange(len(STAGES)) <= goal)
    climbing = jnp.any(todo)
    stage = jnp.argmax(todo)
    # Resources to hold before acting: everything the remaining stages (up to the goal) consume,
    # plus spare wood for tables; capped at the inventory limit of 9.
    remaining = todo[:, None] * req
    want = jnp.minimum(9, remaining.sum(0) + jnp.array([SPARE_WOOD, 0, 0, 0]) * climbing)
    want = jnp.maximum(want, req[stage])
    tools = jnp.array([True, inv.wood_pickaxe > 0, inv.wood_pickaxe > 0, inv.stone_pickaxe > 0])
    # Only collect what the current stage needs directly, or later needs once the tools allow it.
    lacking = (have < want) & tools
    lacking = lacking & (jnp.arange(4) <= jnp.where(req[stage].sum() > 0, 3, -1))
    res_blocks = jnp.array([TREE, STONE, COAL, IRON], jnp.int32)
    collect_res = jnp.any(lacking)
    res_target = res_blocks[jnp.argmax(lacking)]
    need_t = need_table[stage]
    need_f = need_furnace[stage]
    table_wood = jnp.where(need_t & ~table_close, 2, 0)
    short_of_table_wood = have[0] < req[stage, 0] + table_wood

    # ---- survival drives, with hysteresis kept in pstate (refill drink / food until nearly full).
    drink_on = (state.player_drink <= 4) | (pstate["drink"] & (state.player_drink < 9))
    food_on = (state.player_food <= 4) | (pstate["food"] & (state.player_food < 9))
    zombie_adjacent = jnp.any(zombies[nb_yx[:, 0], nb_yx[:, 1]])
    # Sleep when tired, or to heal faster when hurt (sleep starts only below 9 energy).
    sleepy = ((state.player_energy <= 2) | ((state.player_health <= 3) & (state.player_energy < 8)))
    sleepy = sleepy & ~state.is_sleeping
    # Shelter before sleeping: mobs spawn 10+ cells away, so a pocket of a few walkable cells
    # walled off by blocks is safe. Measure the walkable region reachable from the player.
    free_SS = walkable[w]

    def grow(_, reach):
      p = jnp.pad(reach, 1)
      nb = p[:-2, 1:-1] | p[2:, 1:-1] | p[1:-1, :-2] | p[1:-1, 2:]
      return reach | (nb & free_SS)

    reach = jax.lax.fori_loop(0, 8, grow, jnp.zeros((side, side), bool).at[c, c].set(True))
    # Give up walling in after a while (the place-stone dance can cycle in open ground).
    sheltered = (reach.sum() <= 4) | (pstate["shelter"] > 24)

    # Target codes: 0 none, else a block id; 100 = cow, 101 = zombie.
    # Mode: 0 navigate to target and "do"; 1 immediate action; 2 place (needs a free facing cell).
    def pick(cond, m, a, t, cur):
      return tuple(jnp.where(cond, x, y) for x, y in zip((m, a, t), cur))

    cur = (jnp.int32(1), jnp.int32(ACT["noop"]), jnp.int32(0))
    # Lowest priority first; later picks override.
    # Free play (goal reached): plant saplings, eat ripe plants, pull grass for saplings, wander.
    cur = pick(True, 0, ACT["do"], GRASS, cur)
    cur = pick(jnp.any(w == RIPE), 0, ACT["do"], RIPE, cur)
    cur = pick(inv.sapling > 0, 2, ACT["place_plant"], 0, cur)
    # Climbing the tech tree.
    stage_do = stage_block[stage]
    cur = pick(climbing & (stage_do >= 0), 0, ACT["do"], stage_do, cur)
    cur = pick(climbing & (stage_do < 0) & is_place[stage] & ~need_t, 2, final_action[stage], 0, cur)
    crafting = climbing & (stage_do < 0) & need_t
    cur = pick(crafting & near_table & (~need_f | near_furnace) & ~is_place[stage], 1, final_action[stage], 0, cur)
    cur = pick(crafting & near_table & is_place[stage], 2, final_action[stage], 0, cur)
    # Near a table but not a furnace, and the stage needs both: place a furnace here.
    cur = pick(crafting & near_table & need_f & ~near_furnace, 2, ACT["place_furnace"], 0, cur)
    cur = pick(crafting & ~near_table & table_close, 0, ACT["noop"], TABLE, cur)
    cur = pick(crafting & ~near_table & ~table_close, 2, ACT["place_table"], 0, cur)
    cur = pick(crafting & ~near_table & ~table_close & short_of_table_wood, 0, ACT["do"], TREE, cur)
    cur = pick(climbing & collect_res, 0, ACT["do"], res_target, cur)
    # Survival overrides: rest, then food and water (which may interrupt resting), then fighting.
    cur = pick(sleepy & (sheltered | (inv.stone == 0)), 1, ACT["sleep"], 0, cur)
    cur = pick(sleepy & ~sheltered & (inv.stone > 0), 2, ACT["place_stone"], 0, cur)
    cur = pick(food_on & (jnp.any(cows) | ~sleepy), 0, ACT["do"], 100, cur)
    cur = pick(drink_on & (jnp.any(w == WATER) | ~sleepy), 0, ACT["do"], WATER, cur)
    cur = pick(zombie_adjacent, 0, ACT["do"], 101, cur)
    mode, action_now, target = cur

    # ---- navigation toward the target.
    target_SS = jnp.where(target == 100, cows, jnp.where(target == 101, zombies, (w == target) & (target > 0)))
    dig = inv.wood_pickaxe > 0
    cost_SS = jnp.where(walkable[w], 1.0, INF)
    cost_SS = jnp.where((w == STONE) & dig, 3.0, cost_SS)
    cost_SS = jnp.where(w == TREE, 4.0, cost_SS)
    cost_SS = jnp.where(mobs & ~target_SS, 3.0, cost_SS)
    dist = plan(target_SS, cost_SS)
    nb_dist = dist[nb_yx[:, 0], nb_yx[:, 1]] + 0.01 * jax.random.uniform(k_tie, (4,))
    best = jnp.argmin(nb_dist)
    reachable = nb_dist[best] < INF / 2
    best_target = target_SS[nb_yx[best, 0], nb_yx[best, 1]]
    best_free = nb_free[best]
    faced = facing == best
    # Facing the chosen cell and it is not walkable (target, stone to dig, tree, mob): interact.
    nav_action = jnp.where(faced & (best_target | ~best_free), jnp.where(best_target, action_now, ACT["do"]),
                           move_actions[best])
    nav_action = jnp.where(best_target & ~faced, move_actions[best], nav_action)

    # ---- exploration when the target is out of sight: keep a heading, dig through stone if possible.
    heading = pstate["heading"]
    h_block = nb_block[heading]
    h_diggable = ((h_block == STONE) & dig) | (h_block == TREE)
    h_ok = nb_free[heading] | h_diggable
    turn = (~h_ok) | (jax.random.uniform(k_dir) < 0.05)
    new_heading = jnp.where(turn, jax.random.randint(k_turn, (), 0, 4), heading)
    e_block = nb_block[new_heading]
    e_dig = ((e_block == STONE) & dig) | (e_block == TREE)
    explore_action = jnp.where(e_dig & (facing == new_heading), ACT["do"], move_actions[new_heading])
    explore_action = jnp.where(walkable[e_block] | e_dig | nb_mob[new_heading], explore_action, ACT["noop"])

    # ---- placing: face a free cell first (turning toward a free cell moves onto it, so retry next step).
    free_any = jnp.any(nb_free)
    first_free = jnp.argmax(nb_free)
    place_ok = facing_free | ((action_now == ACT["place_stone"]) & (facing_block == WATER))
    place_ok = place_ok & jnp.where(action_now == ACT["place_plant"], facing_block == GRASS, True)
    place_action = jnp.where(place_ok, action_now, jnp.where(free_any, move_actions[first_free], ACT["do"]))

    nav_or_explore = jnp.where(reachable, nav_action, explore_action)
    heading_out = jnp.where(reachable, heading, new_heading)
    action = jnp.where(mode == 0, nav_or_explore, jnp.where(mode == 1, action_now, place_action))

    # ---- epsilon-random play (never a step into lava unless the policy is fully random).
    rand_a = jax.random.randint(k_act, (), 0, len(ACTION_NAMES))
    rand_move = jnp.argmax(move_actions == rand_a)
    # A scripted (skill > 0) policy's random actions never step into lava nor fall asleep in the open.
    into_lava = (rand_a >= 1) & (rand_a <= 4) & (nb_block[rand_move] == LAVA)
    rand_a = jnp.where((into_lava | (rand_a == ACT["sleep"])) & (skill > 0), ACT["noop"], rand_a)
    use_expert = jax.random.uniform(k_eps) < skill
    action = jnp.where(use_expert, action, rand_a).astype(jnp.int32)
    shelter = jnp.where(sleepy & ~sheltered & (inv.stone > 0), pstate["shelter"] + 1, 0)
    new_pstate = {"heading": heading_out.astype(jnp.int32), "drink": drink_on, "food": food_on,
                  "shelter": shelter.astype(jnp.int32)}
    return action, new_pstate

  return expert


# ---------------------------------------------------------------------------- numpy wrapper


class CraftaxClassic:
  """Craftax-Classic (pixels) implementing the `Env` protocol.

  Args:
    size: frame height and width in pixels (the native render is 63x63).
    max_steps: steps after which an episode is truncated (frames = steps + 1).
  """

  name = "craftax"
  fps = 10
  task_names = ACHIEVEMENT_NAMES
  action_spec = ActionSpec((ActionComponent("action", "discrete", len(ACTION_NAMES), ACTION_NAMES),))

  def __init__(self, size: int = 64, max_steps: int = 10000):
    if size < 8:
      raise ValueError(f"CraftaxClassic: size must be >= 8, got {size}")
    if max_steps < 1:
      raise ValueError(f"CraftaxClassic: max_steps must be >= 1, got {max_steps}")
    self.size = size
    self.max_steps = max_steps
    self.frame_shape = (size, size, 3)
    self.state = None
    self.task = 0
    self.steps = 0
    self._carry = None
    self._expert = None

  def _fns(self):
    # The collector's batched programs with one env and one step per call, so a process that
    # both collects (num_envs=1, chunk=1) and steps this wrapper compiles craftax only once.
    return _batched_fns(self.size, self.max_steps, 1)

  def reset(self, seed: int, task: int | None = None) -> tuple[np.ndarray, int]:
    """Starts an episode from `seed`; returns (first frame uint8 [H,W,3], task id).

    The task id only labels the episode; default 0.
    """
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    self.task = 0 if task is None else int(task)
    if not 0 <= self.task < len(ACHIEVEMENT_NAMES):
      raise ValueError(f"CraftaxClassic: task must be in [0, {len(ACHIEVEMENT_NAMES)}), got {task}")
    reset_key, step_key, policy_key = episode_keys(seed)
    new_worlds, _, _ = self._fns()
    frames, states = new_worlds(reset_key[None])
    self._carry = {"state": states, "pstate": _batched_policy_state(1), "t": jnp.zeros((1,), jnp.int32),
                   "done": jnp.zeros((1,), bool), "step_key": step_key[None], "policy_key": policy_key[None],
                   "goal": jnp.full((1,), len(STAGES) - 1, jnp.int32), "skill": jnp.ones((1,), jnp.float32)}
    self.state = jax_tree_first(states)
    self.steps = 0
    return np.asarray(frames[0]), self.task

  def step(self, action: Any) -> tuple[np.ndarray, float, bool, dict[str, Any]]:
    """Applies an action (int or int32 [1]); returns (frame, reward, done, info).

    info: "terminal" (the player died), "unlocked" (bool [22], achievements
    unlocked by this step), "achievements" (bool [22], all so far), "success"
    (the task's achievement is unlocked) and "task".
    """
    if self.state is None:
      raise RuntimeError("CraftaxClassic.step called before reset")
    a = int(np.asarray(action).reshape(-1)[0])
    if not 0 <= a < len(ACTION_NAMES):
      raise ValueError(f"CraftaxClassic: action must be in [0, {len(ACTION_NAMES)}), got {a}")
    _, _, rollout = self._fns()
    self._carry, out = rollout(self._carry, np.full((1, 1), a, np.int32))
    self.state = jax_tree_first(self._carry["state"])
    self.steps += 1
    unlocked = np.asarray(out["unlocked"][0, 0])
    achievements = np.asarray(self.state.achievements)
    info = {"terminal": bool(out["died"][0, 0]), "unlocked": unlocked, "achievements": achievements,
            "success": bool(achievements[self.task]), "task": self.task}
    return np.asarray(out["frame"][0, 0]), float(unlocked.sum()), bool(out["done"][0, 0]), info

  def expert_action(self, goal_stage: int = len(STAGES) - 1, skill: float = 1.0) -> np.ndarray:
    """The scripted expert's next action (int32 [1]) for the current state (its memory is not kept)."""
    import jax  # pylint: disable=g-import-not-at-top
    if self._expert is None:
      self._expert = jax.jit(_craftax_fns(self.size, self.max_steps)["expert"])
    c = self._carry
    key = jax.random.fold_in(c["policy_key"][0], self.steps)
    a, _ = self._expert(self.state, jax_tree_first(c["pstate"]), np.int32(goal_stage), np.float32(skill), key)
    return np.array([int(a)], np.int32)


def jax_tree_first(tree):
  """Row 0 of every leaf of a batched pytree."""
  import jax  # pylint: disable=g-import-not-at-top
  return jax.tree.map(lambda x: x[0], tree)


def episode_keys(seed: int):
  """(reset key, step key, policy key) of an episode; step t uses fold_in(step key, t)."""
  import jax  # pylint: disable=g-import-not-at-top
  return tuple(jax.random.split(jax.random.PRNGKey(int(seed) % (2**31)), 3))


# ---------------------------------------------------------------------------- batched collection


@functools.lru_cache(maxsize=None)
def _batched_fns(size: int, max_steps: int, chunk: int):
  """Jitted batched functions: new_worlds(keys), merge(...) and rollout(carry, forced) over `chunk` steps.

  Cached, so the wrapper and the collector share compiled programs (same shapes: no recompilation).
  Step-at-a-time programs (chunk 1: the wrapper, tests) are latency bound, not throughput bound, so
  they are compiled with XLA's cheap settings (about 25% less compile time, same results).
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  f = _craftax_fns(size, max_steps)
  jit = jax.jit if chunk > 1 else functools.partial(jax.jit, compiler_options=FAST_COMPILE)

  @jit
  def new_worlds(reset_keys):
    return jax.vmap(f["reset"])(reset_keys)

  @jit
  def merge(carry, fresh_states, fresh_idx, dead, step_keys, policy_keys, goals, skills):
    """Gives dead slots the fresh world fresh_idx[b] and new per-episode keys and knobs."""
    take = lambda x: x[fresh_idx]
    sel = lambda new, old: jnp.where(dead.reshape((-1,) + (1,) * (old.ndim - 1)), new, old)
    states = jax.tree.map(lambda n, o: sel(take(n), o), fresh_states, carry["state"])
    pstate0 = _batched_policy_state(dead.shape[0])
    out = dict(carry)
    out["state"] = states
    out["pstate"] = jax.tree.map(sel, pstate0, carry["pstate"])
    out["t"] = jnp.where(dead, 0, carry["t"])
    out["done"] = jnp.where(dead, False, carry["done"])
    for name, x in (("step_key", step_keys), ("policy_key", policy_keys), ("goal", goals), ("skill", skills)):
      out[name] = sel(x, carry[name])
    return out

  def one_env_step(state, pstate, t, done, step_key, policy_key, goal, skill, forced_action):
    action, pstate = f["expert"](state, pstate, goal, skill, jax.random.fold_in(policy_key, t))
    action = jnp.where(forced_action >= 0, forced_action, action)
    frame, new_state, unlocked, new_done, died = f["step"](state, action, jax.random.fold_in(step_key, t))
    # Past the end of an episode the slot idles; its outputs are ignored on the host.
    return frame, new_state, pstate, action, unlocked, new_done | done, died

  @jit
  def rollout(carry, forced_actions):
    """forced_actions int32 [chunk, B]: the action to take, or -1 for the expert's."""
    def body(c, forced):
      frame, state, pstate, action, unlocked, done, died = jax.vmap(one_env_step)(
          c["state"], c["pstate"], c["t"], c["done"], c["step_key"], c["policy_key"], c["goal"], c["skill"],
          forced)
      was_done = c["done"]
      c = dict(c, state=state, pstate=pstate, t=c["t"] + 1, done=done)
      return c, {"frame": frame, "action": action, "unlocked": unlocked, "done": done, "died": died,
                 "was_done": was_done}
    return jax.lax.scan(body, carry, forced_actions)

  return new_worlds, merge, rollout


def collect_batched(episode_params: Callable[[int], tuple[int, float, int]], *, size: int, max_steps: int,
                    num_envs: int = 64, chunk: int = 64, max_episodes: int | None = None,
                    max_frames: int | None = None, sink: Callable[[list[dict[str, Any]]], None],
                    log: Callable[[str], None] | None = None) -> dict[str, Any]:
  """Runs the scripted expert in `num_envs` Craftax envs at once and hands finished episodes to `sink`.

  Args:
    episode_params: k -> (env seed, skill, goal stage) of episode k.
    size: frame height and width.
    max_steps: steps after which an episode is truncated.
    num_envs: envs stepped together (vmap width).
    chunk: steps per jitted scan call; finished slots get a new world between calls.
    max_episodes: stop starting episodes after this many (None: no limit).
    max_frames: stop starting episodes once this many frames are collected or under way (None: no limit).
    sink: called with lists of finished episodes (dicts of EpisodeStore.append arguments plus
      "extra": {"achievement_unlocks": uint8 [T, 22]}), in episode order.
    log: optional progress printer.

  Returns:
    Summary: episodes, frames, seconds, frames_per_second, steps_per_second (env steps
    including idle slots), returns, successes (per episode: goal achievement reached).
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  if max_episodes is None and max_frames is None:
    raise ValueError("collect_batched: give max_episodes or max_frames")
  num_envs = max(1, min(num_envs, max_episodes or num_envs))
  new_worlds, merge, rollout = _batched_fns(size, max_steps, chunk)
  no_force = jnp.full((chunk, num_envs), -1, jnp.int32)
  t0 = time.perf_counter()

  next_episode = 0
  frames_started = 0  # frames of finished episodes plus steps of running ones (budget check)
  reserve: dict[str, Any] = {}

  def can_start():
    if max_episodes is not None and next_episode >= max_episodes:
      return False
    return max_frames is None or frames_started < max_frames

  def fetch_reserve(first):
    """Worlds for episodes first .. first + num_envs - 1, generated in one batched call."""
    seeds, skills, goals = zip(*(episode_params(k) for k in range(first, first + num_envs)))
    keys = [episode_keys(s) for s in seeds]
    reset_keys, step_keys, policy_keys = (jnp.stack([k[i] for k in keys]) for i in range(3))
    frames, states = new_worlds(reset_keys)
    return {"first": first, "frames": np.asarray(frames), "states": states, "step_keys": step_keys,
            "policy_keys": policy_keys, "skills": np.asarray(skills, np.float32),
            "goals": np.asarray(goals, np.int32)}

  # Slot bookkeeping on the host.
  slot_episode = np.full((num_envs,), -1)
  slot_parts: list[list[dict[str, np.ndarray]]] = [[] for _ in range(num_envs)]
  finished: dict[int, dict[str, Any]] = {}
  next_to_emit = 0
  returns: dict[int, float] = {}
  successes: dict[int, bool] = {}
  carry = None
  total_frames, env_steps = 0, 0
  last_log = -1e9

  def flush(assign, fresh_idx):
    """Moves the worlds reserve[fresh_idx[b]] into the slots b where assign[b]."""
    nonlocal carry
    if not assign.any():
      return
    idx = jnp.asarray(fresh_idx)
    if carry is None:
      carry = {"state": reserve["states"], "pstate": _batched_policy_state(num_envs),
               "t": jnp.zeros((num_envs,), jnp.int32), "done": jnp.ones((num_envs,), bool),
               "step_key": reserve["step_keys"], "policy_key": reserve["policy_keys"],
               "goal": jnp.asarray(reserve["goals"]), "skill": jnp.asarray(reserve["skills"])}
    carry = merge(carry, reserve["states"], idx, jnp.asarray(assign), reserve["step_keys"][idx],
                  reserve["policy_keys"][idx], jnp.asarray(reserve["goals"][fresh_idx]),
                  jnp.asarray(reserve["skills"][fresh_idx]))

  def emit_ready():
    nonlocal next_to_emit
    batch = []
    while next_to_emit in finished:
      batch.append(finished.pop(next_to_emit))
      next_to_emit += 1
    if batch:
      sink(batch)

  while True:
    dead = slot_episode < 0
    if dead.any() and can_start():
      fresh_idx = np.zeros((num_envs,), np.int32)
      assign = np.zeros((num_envs,), bool)
      for b in np.flatnonzero(dead):
        if not can_start():
          break
        if not reserve or next_episode - reserve["first"] >= num_envs:
          flush(assign, fresh_idx)
          assign[:] = False
          reserve = fetch_reserve(next_episode)
        i = next_episode - reserve["first"]
        fresh_idx[b], assign[b] = i, True
        slot_episode[b] = next_episode
        slot_parts[b] = [{"frame": reserve["frames"][i][None], "action": np.zeros((1,), np.int32),
                          "unlocked": np.zeros((1, len(ACHIEVEMENT_NAMES)), bool)}]
        next_episode += 1
        frames_started += 1
      flush(assign, fresh_idx)
    active = slot_episode >= 0
    if not active.any():
      break
    carry, out = rollout(carry, no_force)
    out = jax.device_get(out)
    env_steps += chunk * num_envs
    for b in np.flatnonzero(active):
      k = int(slot_episode[b])
      live = ~out["was_done"][:, b]
      n = int(live.sum())
      slot_parts[b].append({"frame": out["frame"][:n, b], "action": out["action"][:n, b],
                            "unlocked": out["unlocked"][:n, b]})
      frames_started += n
      if n < chunk or out["done"][chunk - 1, b]:
        goal = int(episode_params(k)[2])
        ep = _finish(slot_parts[b], goal)
        finished[k] = ep
        returns[k] = float(ep["rewards_T"].sum())
        successes[k] = bool(ep["extra"]["achievement_unlocks"][:, STAGE_ACHIEVEMENTS[goal]].any())
        total_frames += ep["frames_THWC"].shape[0]
        slot_parts[b] = []
        slot_episode[b] = -1
    emit_ready()
    secs = time.perf_counter() - t0
    if log is not None and secs - last_log >= 30.0:
      last_log = secs
      log(f"craftax: {len(successes)} episodes, {total_frames} frames, {total_frames / secs:.0f} frames/s")
  emit_ready()
  seconds = time.perf_counter() - t0
  keys = sorted(successes)
  return {"episodes": len(keys), "frames": total_frames, "seconds": seconds,
          "frames_per_second": total_frames / max(seconds, 1e-9),
          "steps_per_second": env_steps / max(seconds, 1e-9),
          "returns": [returns[k] for k in keys], "successes": [successes[k] for k in keys]}


def _batched_policy_state(n: int) -> dict[str, Any]:
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  return {"heading": jnp.zeros((n,), jnp.int32), "drink": jnp.zeros((n,), bool), "food": jnp.zeros((n,), bool),
          "shelter": jnp.zeros((n,), jnp.int32)}


def _finish(parts: Sequence[dict[str, np.ndarray]], goal_stage: int) -> dict[str, Any]:
  """One finished episode as EpisodeStore.append arguments (first frame: null action, unlabelled)."""
  frames = np.concatenate([p["frame"] for p in parts])
  actions = np.concatenate([p["action"] for p in parts]).astype(np.int32)[:, None]
  unlocked = np.concatenate([p["unlocked"] for p in parts]).astype(np.uint8)
  t = frames.shape[0]
  return {"frames_THWC": frames, "actions_discrete_TA": actions,
          "rewards_T": unlocked.sum(-1).astype(np.float32),
          "tasks_T": np.full((t,), STAGE_ACHIEVEMENTS[goal_stage], np.int32),
          "action_labelled_T": np.arange(t) > 0,
          "extra": {"achievement_unlocks": unlocked}}
