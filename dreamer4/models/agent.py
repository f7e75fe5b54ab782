"""The phase-2/3 agent: a dynamics model with agent tokens, plus heads [P §3.3].

`AgentModel` bundles the world model (a `Dynamics` with `num_agent_tokens` > 0 and a
task embedding) with the policy and reward heads of phase 2. Phase 3 trains only
`ImagineHeads` (a copy of the policy and a new value head) on top of a frozen
`AgentModel`.

The agent embedding h_t of a frame is the mean of its agent tokens' outputs (one agent
token by default, so simply its output). The agent reads frames at the context noise
level, the level every history frame has in the KV cache, so the same h_t is obtained
in training (a whole window corrupted once to that level), in imagination and in the
real environment (each frame committed to the cache). This is our choice; the paper
does not say at which noise level the heads read.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from dreamer4.models.dynamics import Dynamics
from dreamer4.models.heads import PolicyHead, RewardHead, ValueHead


def agent_embedding(agent_BTKD):
  """h [..., D] (float32) from the agent tokens' outputs [..., K, D]."""
  return jnp.mean(agent_BTKD.astype(jnp.float32), axis=-2)


class AgentModel(nnx.Module):
  """World model with agent tokens + policy and reward heads (phase 2)."""

  def __init__(self, dynamics: Dynamics, *, mtp: int, hidden: int, num_layers: int, rngs: nnx.Rngs):
    if not dynamics.num_agent_tokens:
      raise ValueError("AgentModel needs a Dynamics with num_agent_tokens >= 1")
    self.dynamics = dynamics
    self.mtp = mtp
    self.policy = PolicyHead(
      dynamics.action_spec, width=dynamics.width, hidden=hidden, num_layers=num_layers, mtp=mtp, rngs=rngs
    )
    self.reward = RewardHead(width=dynamics.width, hidden=hidden, num_layers=num_layers, mtp=mtp, rngs=rngs)


class ImagineHeads(nnx.Module):
  """What phase 3 trains: the policy (initialised from phase 2's) and a new value head."""

  def __init__(self, dynamics: Dynamics, *, mtp: int, hidden: int, num_layers: int, rngs: nnx.Rngs):
    self.policy = PolicyHead(
      dynamics.action_spec, width=dynamics.width, hidden=hidden, num_layers=num_layers, mtp=mtp, rngs=rngs
    )
    self.value = ValueHead(width=dynamics.width, hidden=hidden, num_layers=num_layers, rngs=rngs)
