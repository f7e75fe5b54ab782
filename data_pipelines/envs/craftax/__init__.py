r"""Craftax-Classic behind the project's env interface: the game's names and the expert's tech tree.

The world is `Craftax-Classic-Pixels-v1` (craftax 1.6.1, pure JAX). Its 63x63
float pixels are resized with `jax.image.resize` (bilinear) to `size` x `size`
(at size 63, kept as drawn: 9x9 cells of 7 px) and stored as uint8.

- Actions: the env's 17 discrete actions, one discrete component "action".
- Rewards: +1 per achievement unlocked at a step (the env's own health-change
  term is dropped), so an episode's return is the number of achievements it got.
- Tasks: the 22 achievement names. An episode's task id is the achievement the
  behaviour policy was told to reach: the scripted expert climbs the tech tree
  (STAGES: wood, table, wooden pickaxe and sword, stone, placed stone, stone
  pickaxe and sword, furnace, coal, iron, iron pickaxe and sword, diamond) and
  stops climbing once it holds that achievement (then it keeps itself alive,
  plants saplings and wanders). Random-play episodes carry a task id too; the
  policy ignores it.
- Episodes end when the player dies (lava, health) or after `max_steps` steps.

Modules (this one holds only names, so importing it stays cheap and jax-free):

  env.py      the jitted env programs (reset, step, and the batched rollout with the
              expert acting unless an action is forced) and `CraftaxClassic`, the
              numpy wrapper implementing `data_pipelines.envs.base.Env`
  expert.py   the scripted expert (reads the symbolic state; pure JAX)
  collect.py  the batched collector: `num_envs` episodes at a time in JAX

Reproducibility: episode k of a collection with base seed s uses the env seed
of `data_pipelines.collect._episode_seeds(s, k)`; `CraftaxClassic.reset(env_seed)`
followed by the stored actions replays the stored frames and rewards exactly.

The first use of craftax processes its textures (about 30 s on 2 cores) and
caches them inside the installed craftax package (site-packages must be
writable); later processes load the cache.
"""

from __future__ import annotations

ACTION_NAMES = (
  "noop",
  "left",
  "right",
  "up",
  "down",
  "do",
  "sleep",
  "place_stone",
  "place_table",
  "place_furnace",
  "place_plant",
  "make_wood_pickaxe",
  "make_stone_pickaxe",
  "make_iron_pickaxe",
  "make_wood_sword",
  "make_stone_sword",
  "make_iron_sword",
)
# Per action: what the world-model probe (dreamer4/evaluation/probe.py) pools it with. The four
# moves shift the player-centred view (or turn the player where the way is blocked).
MOVE_ACTIONS = ("left", "right", "up", "down")
ACTION_GROUPS = tuple("move" if name in MOVE_ACTIONS else "other" for name in ACTION_NAMES)
# Index order of craftax_classic.constants.Achievement (checked by the tests).
ACHIEVEMENT_NAMES = (
  "collect_wood",
  "place_table",
  "eat_cow",
  "collect_sapling",
  "collect_drink",
  "make_wood_pickaxe",
  "make_wood_sword",
  "place_plant",
  "defeat_zombie",
  "collect_stone",
  "place_stone",
  "eat_plant",
  "defeat_skeleton",
  "make_stone_pickaxe",
  "make_stone_sword",
  "wake_up",
  "place_furnace",
  "collect_coal",
  "collect_iron",
  "collect_diamond",
  "make_iron_pickaxe",
  "make_iron_sword",
)
ACH = {n: i for i, n in enumerate(ACHIEVEMENT_NAMES)}
ACT = {n: i for i, n in enumerate(ACTION_NAMES)}

# The tech tree the expert climbs, in order: (achievement, wood, stone, coal, iron, needs table, needs furnace,
# final action). Resource stages ("collect_*") have final action "do" at the matching block. An episode's
# task label is the achievement of its goal stage.
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
