"""ToyWorld's scripted expert behind env_eval's `Policy` protocol, for tests.

The scripted expert reads the simulator state, which env_eval's protocol (numpy frames in,
actions out) does not hand a policy. `evaluate_scripted` runs `env_eval.evaluate` with its
`make_env` wrapped so the policy sees the envs evaluate makes: evaluate steps the batch of B
episodes in its first B envs, in order, so row j of a batch is env j.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from data_pipelines.envs.toy import ScriptedPolicy
from dreamer4.evaluation import env_eval


class ScriptedPolicyAdapter:
  """ToyWorld's `ScriptedPolicy` (greedy toward the task goal with probability `skill`) as a `Policy`.

  Run it with `evaluate_scripted`, which gives it the env objects. Each episode gets its own
  `ScriptedPolicy`, seeded from the batch's rng.

  Args:
    skill: probability in [0, 1] of the greedy action (1.0 is the near-expert).
    name: label of the policy (default "scripted_<skill>").
  """

  def __init__(self, skill: float, name: str | None = None):
    if not 0.0 <= skill <= 1.0:
      raise ValueError(f"ScriptedPolicyAdapter: skill must be in [0, 1], got {skill}")
    self.skill = float(skill)
    self.name = name or f"scripted_{skill:g}"
    self.envs: list[Any] = []  # filled by evaluate_scripted
    self._policies: list[Any] = []

  def _act(self) -> np.ndarray:
    return np.stack([p(env) for p, env in zip(self._policies, self.envs)]).astype(np.int32)

  def begin(self, frames_BHWC, tasks_B, rng):
    b = len(frames_BHWC)
    if len(self.envs) < b:
      raise ValueError(
        f"ScriptedPolicyAdapter: sees {len(self.envs)} envs but got {b} frames; run it with evaluate_scripted"
      )
    for env in self.envs:
      if not hasattr(env, "greedy_action"):
        raise ValueError(
          f"ScriptedPolicyAdapter: env {getattr(env, 'name', env)!r} has no greedy_action; "
          "the scripted policy works on the toy env only"
        )
    self._policies = [ScriptedPolicy(self.skill, int(s)) for s in rng.integers(0, 2**31 - 1, b)]
    return self._act()

  def next(self, frames_BHWC, actions_BA, rng):
    return self._act()


def evaluate_scripted(env_name: str, policy: ScriptedPolicyAdapter, **kw):
  """`env_eval.evaluate(env_name, policy, **kw)`, with `policy.envs` set to the envs it makes."""
  policy.envs = []
  make_env = env_eval.make_env

  def recording_make_env(*args, **kwargs):
    env = make_env(*args, **kwargs)
    policy.envs.append(env)
    return env

  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(env_eval, "make_env", recording_make_env)
    return env_eval.evaluate(env_name, policy, **kw)
