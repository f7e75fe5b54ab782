"""ToyWorld and ScriptedPolicy: determinism, reward semantics, policy quality."""

import numpy as np
import pytest

from data_pipelines.envs import make_env
from data_pipelines.envs.toy import ScriptedPolicy, ToyWorld


def _rollout(env, seed, skill, policy_seed=0):
  frame, task = env.reset(seed)
  policy = ScriptedPolicy(skill, policy_seed)
  frames, rewards, done, info = [frame], [0.0], False, {}
  while not done:
    frame, reward, done, info = env.step(policy(env))
    frames.append(frame)
    rewards.append(reward)
  return np.stack(frames), np.array(rewards), task, info


def test_make_env_and_spec():
  env = make_env("toy", size=16)
  assert isinstance(env, ToyWorld)
  assert env.frame_shape == (16, 16, 3)
  assert env.action_spec.discrete_columns == 1 and env.action_spec.continuous_columns == 0
  assert env.action_spec.components[0].name == "move" and env.action_spec.components[0].size == 5
  assert env.task_names == ("reach_red", "reach_green", "reach_blue")
  with pytest.raises(ValueError, match="unknown env 'nope': choose one of .*toy"):
    make_env("nope")
  with pytest.raises(ValueError, match="multiple of 8"):
    ToyWorld(size=20)


def test_deterministic_for_a_seed():
  a = _rollout(ToyWorld(size=16), seed=7, skill=0.5)
  b = _rollout(ToyWorld(size=16), seed=7, skill=0.5)
  c = _rollout(ToyWorld(size=16), seed=8, skill=0.5)
  assert a[0].dtype == np.uint8 and a[0].shape[1:] == (16, 16, 3)
  np.testing.assert_array_equal(a[0], b[0])
  np.testing.assert_array_equal(a[1], b[1])
  assert a[2] == b[2]
  assert a[0].shape != c[0].shape or not np.array_equal(a[0], c[0])


def test_reward_only_for_the_task_kind():
  env = ToyWorld(size=16, num_distractors=0)
  env.reset(0, task=1)
  env.agent_yx = np.array([3, 3])
  env.goals_K2 = np.array([[3, 4], [0, 0], [7, 7]])  # red right of the agent, green (task) far away
  before = env.render()
  _, reward, done, info = env.step(np.array([4], np.int32))  # right: onto red
  assert reward == 0.0 and not done and not info["terminal"]
  assert not np.array_equal(env.goals_K2[0], [3, 4])  # the wrong goal respawned elsewhere
  assert not np.array_equal(env.render(), before)
  env.agent_yx = np.array([0, 1])
  env.goals_K2[0] = [5, 5]
  _, reward, done, info = env.step(np.array([3], np.int32))  # left: onto green
  assert reward == 1.0 and done and info["terminal"] and info["success"]


def test_truncation_after_max_steps():
  env = ToyWorld(size=16, max_steps=3)
  env.reset(1)
  env.goals_K2 = np.array([[7, 7], [7, 6], [7, 5]])
  env.agent_yx = np.array([0, 0])
  dones = [env.step(np.array([0]))[2:] for _ in range(3)]
  assert [d for d, _ in dones] == [False, False, True]
  assert not dones[-1][1]["terminal"]


def test_skilled_policy_beats_random():
  env = ToyWorld(size=16, max_steps=32)
  success = {s: np.mean([_rollout(env, seed, s, seed)[3]["success"] for seed in range(20)]) for s in (1.0, 0.0)}
  assert success[1.0] >= 0.95
  assert success[0.0] <= 0.6
  assert success[1.0] - success[0.0] >= 0.4


def test_fixed_layout_keeps_goals_and_walks_over_wrong_ones():
  from data_pipelines.envs.toy import FIXED_GOALS, GRID

  env = ToyWorld(size=16, num_distractors=0, layout="fixed")
  starts = set()
  for seed in range(40):
    _, task = env.reset(seed)
    np.testing.assert_array_equal(env.goals_K2, FIXED_GOALS)
    assert not (FIXED_GOALS == env.agent_yx).all(-1).any()  # never starts on a goal
    starts.add(tuple(env.agent_yx))
  assert len(starts) >= 25  # the start cell varies (40 draws over 61 free cells)
  env.reset(0, task=2)
  env.agent_yx = FIXED_GOALS[0] + np.array([0, 1])  # right of red; the task is blue
  frame_on_red, reward, done, _ = env.step(np.array([3], np.int32))  # left: onto red
  assert reward == 0.0 and not done
  np.testing.assert_array_equal(env.goals_K2, FIXED_GOALS)  # nothing respawned
  env.agent_yx = FIXED_GOALS[2] - np.array([1, 0])
  _, reward, done, info = env.step(np.array([2], np.int32))  # down: onto blue
  assert reward == 1.0 and done and info["success"]
  assert frame_on_red.shape == (16, 16, 3) and GRID == 8
  with pytest.raises(ValueError, match="layout must be one of random, fixed, got 'grid'"):
    ToyWorld(layout="grid")
