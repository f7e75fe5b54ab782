"""Interactive dynamics model [P §3.2, Fig 2b].

The model reads frozen-tokenizer latents that were corrupted per frame to a signal
level tau (diffusion forcing) and predicts the clean latents of every frame
(x-prediction). Each frame is one block of tokens, in this order (a TokenLayout):

  spatial    S_z = num_latents // group tokens: `group` adjacent latent tokens are
             concatenated (512x16 -> 256x32 in the paper, group = 2) and linearly
             projected to the model width.
  registers  S_r learned register tokens.
  tau_d      ONE token: [E_tau(tau index) (D/2) | E_d(d index) (D/2)].
  action     ONE token: learned base embedding + sum of per-component encodings
             (only the base embedding on unlabelled frames).
  agent      Optional agent tokens (phase 2+): learned tokens + task embedding.
             No other modality reads them (`transformer.dynamics_rule`).

Index conventions (shared with `objectives/shortcut.py` and `inference/sampler.py`;
the paper only says both are "discrete embedding lookups", the rest is our choice):
  tau index  j_max = tau * k_max in 0..k_max. k_max is clean (tau = 1): it has its
             own embedding row, which the shortcut loss never trains (Eq 4 only draws
             tau < 1); it exists for callers that feed clean history.
  d index    e with d = 2**-e, e in 0..log2(k_max): e = 0 is one jump from noise
             (d = 1), e = log2(k_max) is d_min = 1/k_max (the flow-matching step).

Frame t's action token holds the action that LED TO frame t (data_pipelines
convention); the first frame of an episode is unlabelled.

Shape letters: B batch, T frames, N latent tokens, L latent channels, S tokens per
frame, D width, A action columns, K agent tokens, G = group * L grouped channels.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from flax import nnx

from data_pipelines.envs.base import Action, ActionSpec
from dreamer4.errors import ConfigError
from dreamer4.models import transformer as tr

# ----------------------------------------------------------------------------------
# Index conventions for the (tau, d) embeddings.
# ----------------------------------------------------------------------------------


def log2_exact(k: int, name: str = "config.model.k_max") -> int:
  """log2 of a positive power of two, or a ConfigError naming `name`."""
  k = int(k)
  if k < 1 or k & (k - 1):
    raise ConfigError(f"{name} must be a power of two >= 1, got {k}")
  return k.bit_length() - 1


def d_min_index(k_max: int) -> int:
  """d index of the smallest step d_min = 1 / k_max."""
  return log2_exact(k_max)


def d_from_index(d_idx, dtype=jnp.float32):
  """Step size 2**-d_idx as floats (exact for the small integers used here)."""
  return jnp.exp2(-jnp.asarray(d_idx).astype(dtype))


# ----------------------------------------------------------------------------------
# The model.
# ----------------------------------------------------------------------------------


class Dynamics(nnx.Module):
  """Block-causal shortcut/flow transformer over tokenizer latents (x-prediction).

  Args:
    num_latents: N, latent tokens per frame from the tokenizer.
    latent_dim: L, channels per latent token.
    group: Adjacent latent tokens concatenated per spatial token (S_z = N / group).
    num_registers: S_r learned register tokens per frame (count not in the paper).
    action_spec: The dataset's action space.
    k_max: Finest step grid, a power of two (not in the paper; 64 as in lucidrains).
    width, depth, num_heads, num_kv_heads, head_dim, mlp_dim, time_every, softcap:
      Transformer sizes (see `transformer.Transformer`).
    context: Sliding causal time window C in frames (itself included); 0 = unlimited.
    num_agent_tokens: Agent tokens per frame (phase 2+); 0 = none.
    num_tasks: Size of the task-embedding table of the agent tokens.
    rngs: Parameter initialisation RNGs.
    dtype: Compute dtype; parameters stay float32.
    remat: Rematerialise each transformer block in the backward pass.
    scan_layers: Scan the transformer's layer groups (see `transformer.Transformer`).
    remat_policy: What a rematerialised group saves (`transformer.REMAT_POLICIES`).
    attention: Attention implementation (`transformer.ATTENTION_IMPLS`).
  """

  def __init__(
    self,
    *,
    num_latents: int,
    latent_dim: int,
    group: int,
    num_registers: int,
    action_spec: ActionSpec,
    k_max: int = 64,
    width: int,
    depth: int,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    mlp_dim: int,
    time_every: int,
    softcap: float | None,
    context: int,
    num_agent_tokens: int = 0,
    num_tasks: int = 0,
    rngs: nnx.Rngs,
    dtype=jnp.float32,
    remat: bool = False,
    spatial_pos: bool = False,
    scan_layers: bool = True,
    remat_policy: str = "nothing",
    attention: str = "dense",
  ):
    if group < 1 or num_latents % group:
      raise ConfigError(
        f"config.model.group={group} must be >= 1 and divide the tokenizer's "
        f"num_latents={num_latents}; pick a divisor of {num_latents}."
      )
    if num_registers < 0:
      raise ConfigError(f"config.model.num_registers must be >= 0, got {num_registers}")
    if width % 2:
      raise ConfigError(f"config.model.width={width} must be even: the (tau, d) token is two D/2 halves.")
    if context < 0:
      raise ConfigError(f"config.model.context must be >= 0 (0 = unlimited), got {context}")
    if num_agent_tokens < 0 or num_tasks < 0:
      raise ConfigError("config.model.num_agent_tokens and num_tasks must be >= 0")
    self.log2_k_max = log2_exact(k_max)
    self.k_max = int(k_max)
    self.num_latents = num_latents
    self.latent_dim = latent_dim
    self.group = group
    self.num_spatial = num_latents // group
    self.num_registers = num_registers
    self.num_agent_tokens = num_agent_tokens
    self.num_tasks = num_tasks
    self.action_spec = action_spec
    self.width = width
    self.context = context
    self.dtype = dtype
    D, G = width, group * latent_dim

    # Our choice: S_a = 1 action token per frame holding the sum over components
    # (the paper leaves S_a open; one token is what the sum naturally gives).
    segments = [
      ("spatial", self.num_spatial),
      ("registers", num_registers),
      ("tau_d", 1),
      ("action", 1),
      ("agent", num_agent_tokens),
    ]
    # Empty segments are left out so the layout (and mask) only has real tokens.
    self.layout = tr.TokenLayout(tuple((n, c) for n, c in segments if c > 0))

    param = tr.make_param
    small = nnx.initializers.truncated_normal(stddev=0.02)
    zeros = nnx.initializers.zeros

    # Spatial tokens: a linear map of the grouped latents.
    self.latent_in_kernel = param(rngs, tr.fan_in_init(G), (G, D), (None, "embed"))
    # Our choice (opt-in, config.model.spatial_pos): a learned absolute embedding per spatial
    # token, so each token knows which part of the frame it holds (space layers otherwise see
    # only RoPE offsets, and the readout kernel is shared by every token).
    self.spatial_pos = bool(spatial_pos)
    if self.spatial_pos:
      self.spatial_pos_embed = param(
        rngs, nnx.initializers.truncated_normal(stddev=0.02), (num_latents // group, D), (None, "embed")
      )
    self.latent_in_bias = param(rngs, zeros, (D,), ("embed",))
    if num_registers:
      self.registers = param(rngs, small, (num_registers, D), (None, "embed"))
    # (tau, d) token halves. Half-width dims stay unsharded (D/2 need not divide
    # the FSDP axis); the tables are tiny.
    self.tau_embed = param(rngs, small, (self.k_max + 1, D // 2), ("vocab", None))
    self.d_embed = param(rngs, small, (self.log2_k_max + 1, D // 2), ("vocab", None))

    # Action token. All lookups share one table: a discrete component of `size`
    # classes owns `size` rows; each bit of a binary component owns 2 rows. Column
    # c of actions_discrete reads row offset_c + clip(value, 0, size_c - 1).
    offsets, sizes, rows = [], [], 0
    for comp in action_spec.components:
      if comp.kind == "discrete":
        offsets.append(rows)
        sizes.append(comp.size)
        rows += comp.size
      elif comp.kind == "binary":
        for _ in range(comp.size):
          offsets.append(rows)
          sizes.append(2)
          rows += 2
    self._action_offsets = tuple(offsets)  # static Python ints, one per discrete column
    self._action_sizes = tuple(sizes)
    self.action_base = param(rngs, small, (D,), ("embed",))
    if rows:
      self.action_table = param(rngs, small, (rows, D), ("vocab", "embed"))
    Ac = action_spec.continuous_columns
    if Ac:
      # One linear over all continuous columns equals the sum of one linear per
      # continuous component (block structure), so a single kernel suffices. The bias
      # lets a labelled all-zero action differ from the unlabelled base token.
      self.action_cont_kernel = param(rngs, tr.fan_in_init(Ac), (Ac, D), (None, "embed"))
      self.action_cont_bias = param(rngs, zeros, (D,), ("embed",))

    if num_agent_tokens:
      self.agent_tokens = param(rngs, small, (num_agent_tokens, D), (None, "embed"))
      if num_tasks:
        self.task_embed = param(rngs, small, (num_tasks, D), ("vocab", "embed"))

    self.transformer = tr.Transformer(
      width=D,
      depth=depth,
      num_heads=num_heads,
      num_kv_heads=num_kv_heads,
      head_dim=head_dim,
      mlp_dim=mlp_dim,
      time_every=time_every,
      softcap=softcap,
      rngs=rngs,
      dtype=dtype,
      remat=remat,
      scan_layers=scan_layers,
      remat_policy=remat_policy,
      attention=attention,
    )
    self.readout_kernel = param(rngs, tr.fan_in_init(D), (D, G), ("embed", None))
    self.readout_bias = param(rngs, zeros, (G,), (None,))

  @classmethod
  def from_config(
    cls,
    model_cfg,
    num_latents: int,
    latent_dim: int,
    action_spec: ActionSpec,
    rngs: nnx.Rngs,
    *,
    num_agent_tokens: int = 0,
    num_tasks: int = 0,
  ) -> Dynamics:
    """Builds the model from `config.model` of configs/dynamics.py (an ml_collections ConfigDict;
    a saved run's config is first upgraded by `dreamer4.runs.read_config`).

    `num_latents` / `latent_dim` come from the frozen tokenizer, `action_spec` from
    the dataset; `num_agent_tokens` / `num_tasks` from the agent phase (0: phase 1).
    """
    return cls(
      num_latents=int(num_latents),
      latent_dim=int(latent_dim),
      group=int(model_cfg.group),
      num_registers=int(model_cfg.num_registers),
      action_spec=action_spec,
      k_max=int(model_cfg.k_max),
      width=int(model_cfg.width),
      depth=int(model_cfg.depth),
      num_heads=int(model_cfg.num_heads),
      num_kv_heads=int(model_cfg.num_kv_heads),
      head_dim=int(model_cfg.head_dim),
      mlp_dim=int(model_cfg.mlp_dim),
      time_every=int(model_cfg.time_every),
      softcap=model_cfg.softcap,
      context=int(model_cfg.context),
      num_agent_tokens=int(num_agent_tokens),
      num_tasks=int(num_tasks),
      rngs=rngs,
      dtype=jnp.dtype(model_cfg.dtype),
      remat=bool(model_cfg.remat),
      spatial_pos=bool(model_cfg.spatial_pos),
      scan_layers=bool(model_cfg.scan_layers),
      remat_policy=str(model_cfg.remat_policy),
      attention=str(model_cfg.attention),
    )

  # --------------------------------------------------------------------------------
  # Token construction and readout. Kept separate from the transformer call so a
  # later KV-cached step can embed one frame, run the blocks with cached time-layer
  # keys/values (`Attention.project_kv` already yields the cache entries), and read
  # out with the same code.
  # --------------------------------------------------------------------------------

  def group_latents(self, z_BTNL):
    """[B,T,N,L] -> [B,T,S_z,G]: spatial token s holds latents s*group .. s*group+group-1."""
    B, T, N, L = z_BTNL.shape
    return z_BTNL.reshape(B, T, self.num_spatial, self.group * L)

  def ungroup_latents(self, z_BTSG):
    B, T = z_BTSG.shape[:2]
    return z_BTSG.reshape(B, T, self.num_latents, self.latent_dim)

  def embed_tau_d(self, tau_idx_BT, d_idx_BT):
    """The (tau, d) token [B,T,1,D]: concatenated halves of two lookups."""
    # Clipped because a gather past the table end would silently return fill values.
    tau_idx_BT = jnp.clip(jnp.asarray(tau_idx_BT, jnp.int32), 0, self.k_max)
    d_idx_BT = jnp.clip(jnp.asarray(d_idx_BT, jnp.int32), 0, self.log2_k_max)
    tau_BTD = jnp.take(self.tau_embed[...], tau_idx_BT, axis=0)
    d_BTD = jnp.take(self.d_embed[...], d_idx_BT, axis=0)
    return jnp.concatenate([tau_BTD, d_BTD], axis=-1)[:, :, None].astype(self.dtype)

  def embed_actions(self, actions: Action):
    """The action token [B,T,1,D].

    Args:
      actions: Action [B,T]: discrete int32 [B,T,Ad] (discrete and binary columns in
        spec order), continuous float [B,T,Ac], labelled bool [B,T] (False frames get
        only the base embedding). A part the spec has no columns for is not read.
    """
    spec = self.action_spec
    labelled_BT = jnp.asarray(actions.labelled, dtype=bool)
    B, T = labelled_BT.shape
    sum_BTD = jnp.zeros((B, T, self.width), jnp.float32)
    if self._action_offsets:
      disc_BTA = actions.discrete
      if disc_BTA.shape[-1] != spec.discrete_columns:
        raise ValueError(f"actions.discrete must have {spec.discrete_columns} columns, got {disc_BTA.shape}")
      offsets_A = np.asarray(self._action_offsets, np.int32)
      max_A = np.asarray(self._action_sizes, np.int32) - 1
      idx_BTA = jnp.clip(jnp.asarray(disc_BTA, jnp.int32), 0, max_A) + offsets_A
      sum_BTD = sum_BTD + jnp.take(self.action_table[...], idx_BTA, axis=0).sum(axis=2)
    if spec.continuous_columns:
      cont_BTA = actions.continuous
      if cont_BTA.shape[-1] != spec.continuous_columns:
        raise ValueError(f"actions.continuous must have {spec.continuous_columns} columns, got {cont_BTA.shape}")
      # Zero the inputs of unlabelled frames first: a NaN there would otherwise
      # reach the kernel's gradient through the masked branch below.
      cont_BTA = jnp.where(labelled_BT[..., None], jnp.asarray(cont_BTA, jnp.float32), 0.0)
      sum_BTD = sum_BTD + cont_BTA @ self.action_cont_kernel[...] + self.action_cont_bias[...]
    # where (not multiply) so whatever the unlabelled frames hold cannot leak in.
    act_BTD = self.action_base[...] + jnp.where(labelled_BT[..., None], sum_BTD, 0.0)
    return act_BTD[:, :, None].astype(self.dtype)

  def embed_agent(self, B: int, T: int, tasks_BT=None):
    """Agent tokens [B,T,K,D]; `tasks_BT=None` means the learned tokens alone."""
    agent_BTKD = jnp.broadcast_to(self.agent_tokens[...], (B, T) + self.agent_tokens.shape)
    if tasks_BT is not None and self.num_tasks:
      tasks_BT = jnp.clip(jnp.asarray(tasks_BT, jnp.int32), 0, self.num_tasks - 1)
      agent_BTKD = agent_BTKD + jnp.take(self.task_embed[...], tasks_BT, axis=0)[:, :, None]
    return agent_BTKD.astype(self.dtype)

  def embed(self, z_BTNL, tau_idx_BT, d_idx_BT, actions: Action, *, tasks_BT=None):
    """Builds the per-frame token blocks x_BTSD in layout order."""
    B, T, N, L = z_BTNL.shape
    if (N, L) != (self.num_latents, self.latent_dim):
      raise ValueError(f"z_BTNL has latents {N}x{L}, model expects {self.num_latents}x{self.latent_dim}")
    dt = self.dtype
    parts = {}
    z_BTSG = self.group_latents(z_BTNL).astype(dt)
    parts["spatial"] = tr.dense(z_BTSG, self.latent_in_kernel[...].astype(dt)) + self.latent_in_bias[...].astype(dt)
    if self.spatial_pos:
      parts["spatial"] = parts["spatial"] + self.spatial_pos_embed[...].astype(dt)
    if self.num_registers:
      parts["registers"] = jnp.broadcast_to(self.registers[...].astype(dt), (B, T) + self.registers.shape)
    parts["tau_d"] = self.embed_tau_d(tau_idx_BT, d_idx_BT)
    parts["action"] = self.embed_actions(actions)
    if self.num_agent_tokens:
      parts["agent"] = self.embed_agent(B, T, tasks_BT)
    return jnp.concatenate([parts[name] for name in self.layout.names], axis=2)

  def readout(self, y_BTSD):
    """Clean-latent estimate z1_hat [B,T,N,L] (float32) from the spatial outputs."""
    s_BTSD = y_BTSD[:, :, self.layout.slice("spatial")]
    dt = self.dtype
    out_BTSG = tr.dense(s_BTSD, self.readout_kernel[...].astype(dt)) + self.readout_bias[...].astype(dt)
    return self.ungroup_latents(out_BTSG.astype(jnp.float32))

  def time_mask(self, T: int, independent_B=None):
    """Causal time mask with the sliding window `context` (0 = unlimited)."""
    return tr.time_mask(T, window=self.context or None, independent_B=independent_B)

  def __call__(
    self,
    z_BTNL,
    tau_idx_BT,
    d_idx_BT,
    actions: Action,
    *,
    tasks_BT=None,
    independent_B=None,
    return_tokens: bool = False,
  ):
    """Predicts clean latents for every frame.

    Args:
      z_BTNL: Corrupted latents z~ = (1 - tau) z0 + tau z1, per frame.
      tau_idx_BT: int32 signal-level index, tau = tau_idx / k_max (0..k_max).
      d_idx_BT: int32 step-size index, d = 2**-d_idx (0..log2 k_max).
      actions: Action [B,T] (data_pipelines/envs/base.py): the action that led to
        each frame; labelled False = use the "no action" base token.
      tasks_BT: int32 task ids for the agent tokens (ignored without agent tokens).
      independent_B: Optional bool [B]; True rows get a diagonal time mask and are
        treated as independent images [P §4].
      return_tokens: Also return the transformer's output tokens.

    Returns:
      dict with z1_hat_BTNL (float32); agent_BTKD when the model has agent tokens;
      tokens_BTSD when `return_tokens`.
    """
    B, T = z_BTNL.shape[:2]
    x_BTSD = self.embed(z_BTNL, tau_idx_BT, d_idx_BT, actions, tasks_BT=tasks_BT)
    y_BTSD = self.transformer(
      x_BTSD,
      space_mask_SS=tr.space_mask(self.layout, tr.dynamics_rule(self.layout.names)),
      time_mask_BTT=self.time_mask(T, independent_B),
    )
    out = {"z1_hat_BTNL": self.readout(y_BTSD)}
    if self.num_agent_tokens:
      out["agent_BTKD"] = y_BTSD[:, :, self.layout.slice("agent")]
    if return_tokens:
      out["tokens_BTSD"] = y_BTSD
    return out


# ----------------------------------------------------------------------------------
# Closures for the objective and the sampler, which only see apply functions.
# ----------------------------------------------------------------------------------


def make_training_fn(model: Dynamics, actions: Action, *, tasks_BT=None):
  """apply_fn(z, tau_idx, d_idx, independent_B) -> z1_hat for `shortcut_loss`.

  `actions` is the batch's Action [B,T]. The loss runs its bootstrap passes on the
  first n rows of the batch only, so the closure slices every per-row input to the
  leading z.shape[0] rows.
  """

  def apply_fn(z_BTNL, tau_idx_BT, d_idx_BT, independent_B=None):
    n = z_BTNL.shape[0]
    rows = lambda a: None if a is None else a[:n]
    return model(
      z_BTNL,
      tau_idx_BT,
      d_idx_BT,
      Action(*(a[:n] for a in actions)),
      tasks_BT=rows(tasks_BT),
      independent_B=independent_B,
    )["z1_hat_BTNL"]

  return apply_fn


def make_sampling_fn(model: Dynamics):
  """apply_fn(z, tau_idx, d_idx, actions) -> z1_hat for `inference.sampler.generate`.

  `actions` is the window of an Action [B,T] (the sampler cuts every field to it).
  """

  # Sampling takes no gradients, so rematerialising blocks would only cost time,
  # and nnx.remat (the unscanned stack's) inside the sampler's lax loops fails (it
  # updates Variables from an inner trace). So sample with a remat-free view that
  # shares the parameters.
  view = nnx.merge(*nnx.split(model))
  view.transformer.remat = False

  def apply_fn(z_BTNL, tau_idx_BT, d_idx_BT, actions):
    return view(z_BTNL, tau_idx_BT, d_idx_BT, actions)["z1_hat_BTNL"]

  return apply_fn
