r"""The scripted Craftax expert: pure JAX, reading the symbolic state (map, mobs, inventory, intrinsics).

It plans on a (2R+1)^2 window around the player with a few rounds of min-plus
distance relaxation: it walks toward the nearest target block, digs through
stone when it holds a pickaxe, and acts when it faces the target. It climbs the
tech tree (`STAGES`) up to its goal stage, then keeps itself alive, plants
saplings and wanders. Its `skill` is the probability of taking its own action
rather than a uniformly random one.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from data_pipelines.envs.craftax import ACT, ACTION_NAMES, STAGE_ACHIEVEMENTS, STAGES

# craftax_classic.constants.BlockType values.
OUT, GRASS, WATER, STONE, TREE, WOOD, PATH, COAL, IRON, DIAMOND, TABLE, FURNACE, SAND, LAVA, PLANT, RIPE = (
  1,
  2,
  3,
  4,
  5,
  6,
  7,
  8,
  9,
  10,
  11,
  12,
  13,
  14,
  15,
  16,
)
WALKABLE = (GRASS, SAND, PATH)

# Stage index -> navigation target of its "do" (resource stages only); -1 elsewhere.
_STAGE_BLOCK = {
  "collect_wood": TREE,
  "collect_stone": STONE,
  "collect_coal": COAL,
  "collect_iron": IRON,
  "collect_diamond": DIAMOND,
}
# Spare wood carried for re-placing tables near distant stone/iron (two tables' worth).
SPARE_WOOD = 4
WINDOW_RADIUS = 10  # planning window is (2R+1)^2 cells around the player
PLAN_ITERS = 24  # min-plus relaxation rounds (longest planned path)
TABLE_REACH = 6  # a table within this Manhattan distance is walked to rather than re-placed
INF = 1e4
TIE_BIAS = 1e-3  # per move index: breaks ties between equal path lengths in _MOVES order

# Direction actions and their (drow, dcol), as craftax_classic.constants.DIRECTIONS.
_MOVES = ((1, 0, -1), (2, 0, 1), (3, -1, 0), (4, 1, 0))


def policy_state(n: int) -> dict[str, Any]:
  """The expert's memory at an episode start, for `n` envs (heading, drink/food hysteresis, shelter steps)."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  return {
    "heading": jnp.zeros((n,), jnp.int32),
    "drink": jnp.zeros((n,), bool),
    "food": jnp.zeros((n,), bool),
    "shelter": jnp.zeros((n,), jnp.int32),
  }


@functools.cache
def make_expert() -> Callable[..., Any]:
  """`expert(state, pstate, goal, skill, key) -> (action, pstate)` for one env (pure; vmap it).

  state: the craftax state; pstate: the expert's memory (see `policy_state`); goal: the goal
  stage (index into STAGES); skill: the probability of its own action rather than a random one.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

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
    _, k_dir, k_eps, k_act, k_turn = jax.random.split(key, 5)
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
    sleepy = (state.player_energy <= 2) | ((state.player_health <= 3) & (state.player_energy < 8))
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
    # Ties between equally short paths go to the first move in _MOVES order, not a random one: the
    # expert's action is then a function of what it sees, which behaviour cloning can learn.
    nb_dist = dist[nb_yx[:, 0], nb_yx[:, 1]] + TIE_BIAS * jnp.arange(4)
    best = jnp.argmin(nb_dist)
    reachable = nb_dist[best] < INF / 2
    best_target = target_SS[nb_yx[best, 0], nb_yx[best, 1]]
    best_free = nb_free[best]
    faced = facing == best
    # Facing the chosen cell and it is not walkable (target, stone to dig, tree, mob): interact.
    nav_action = jnp.where(
      faced & (best_target | ~best_free), jnp.where(best_target, action_now, ACT["do"]), move_actions[best]
    )
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
    new_pstate = {
      "heading": heading_out.astype(jnp.int32),
      "drink": drink_on,
      "food": food_on,
      "shelter": shelter.astype(jnp.int32),
    }
    return action, new_pstate

  return expert
