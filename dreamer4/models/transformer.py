"""Block-causal axial transformer shared by the tokenizer and the dynamics model.

[P §3.4]: pre-RMSNorm blocks with RoPE, QKNorm, attention-logit soft capping,
GQA and SwiGLU. Attention is factorised: most layers are space-only (tokens of one
frame attend to each other, subject to a modality mask) and every `time_every`-th
layer is time-only (each token position attends to the same position in the current
and earlier frames). Stacking the two gives block-causal attention: frame t only
ever sees frames <= t.

Every parameter carries logical axis names (see `LOGICAL_AXES`) through
`nnx.with_partitioning`; the mapping of those names to mesh axes lives elsewhere
(`configs.common.LOGICAL_AXIS_RULES`). Activations are constrained by the same names
(`dreamer4.sharding.constrain`: "batch" leading; residual stream "embed", attention
"heads"/"kv_heads", MLP hidden "mlp"), so FSDP and tensor parallelism shard them too;
outside a mesh context the constraints are no-ops.

Attention implementations (`ATTENTION_IMPLS`, `config.model.attention`): space and
time attention both go through `attend`, which runs the dense einsum reference, XLA's
or cuDNN's fused `jax.nn.dot_product_attention`, or a query-chunked version of the
reference; see `attend` for what each does with the logit soft cap.

Scanned layers (`scan_layers=True`, the default): the stack is depth / time_every
copies of one `LayerGroup` (time_every - 1 space layers, then the time layer) whose
parameters are stacked [num_groups, ...] under `groups/blocks/<j>/...` (leading
logical axis "layers", never sharded) and applied by one `jax.lax.scan`, so the
compiled program does not grow with depth. The unscanned layout keeps one module per
layer under `blocks/<i>/...`; `dreamer4.models.scan_layout.convert_layout` maps
parameter trees between the two.

Shape letters used in array names:
  B batch, T frames (time), S tokens per frame, D model width, H query heads,
  G kv heads, R query heads per kv head (H = G * R), K head dim, M mlp hidden,
  Q / V query / key sequence length inside the attention function.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from dreamer4 import sharding as shd
from dreamer4.errors import ConfigError

# The only logical axis names a parameter may carry (None is also allowed). "layers"
# is the leading axis of scanned (stacked) layer parameters, added by nnx.vmap.
LAYER_AXIS = "layers"
LOGICAL_AXES = ("embed", "mlp", "heads", "kv_heads", "head_dim", "vocab", "norm", LAYER_AXIS)

# Remat policies of one scanned unit (one `LayerGroup`). The scan keeps every unit's
# input (its carry) whatever the policy, so "nothing" already keeps the group inputs:
#   nothing    save nothing inside the unit; the backward pass recomputes the unit
#   inputs     also save every layer's input inside the unit (checkpoint name
#              "layer_input"), as per-layer remat of the unscanned stack did
#   attention  save the layer inputs and the attention outputs ("attn_out")
REMAT_POLICIES = ("nothing", "inputs", "attention")

_NEG_INF = -1e30  # Finite so that a fully masked row can never produce NaNs.

# Attention implementations, all computing softmax(mask(cap(q k^T / sqrt(K)))) v:
#   dense    the reference: one einsum over all (query, key) pairs; the [.., Q, V] logits
#            are materialised. The configs' default (every run so far used it).
#   chunked  the reference over chunks of at most ATTENTION_CHUNK queries under lax.map,
#            each chunk rematerialised in the backward pass: logits memory drops from
#            [.., Q, V] to [.., chunk, V] (forward and backward). Keeps the soft cap. With
#            at most ATTENTION_CHUNK tokens (the toy frames have <= 80) it IS the dense path;
#            on CPU, attention forward + backward over 256-1024 tokens ran 2-4x faster than
#            dense (noisy timings on a shared 2-core machine; presumably a chunk's logits
#            stay in cache).
#   xla      jax.nn.dot_product_attention(implementation=None), XLA's fused attention on
#            any platform. Has no soft cap: the cap is DROPPED on this path.
#   cudnn    jax.nn.dot_product_attention(implementation="cudnn"): cuDNN flash attention,
#            NVIDIA GPUs with bfloat16/float16 compute only. The cap is DROPPED here too.
ATTENTION_IMPLS = ("dense", "chunked", "xla", "cudnn")
_FUSED_IMPLS = ("xla", "cudnn")  # no soft cap on these (jax.nn.dot_product_attention has none)
# Queries per chunk of the chunked path (chunks are evened out: Q=262 gives 3 of 88).
ATTENTION_CHUNK = 128


def check_attention(name: str) -> str:
  """`name` if it is one of `ATTENTION_IMPLS`, else a ConfigError."""
  if name not in ATTENTION_IMPLS:
    raise ConfigError(f"--config.model.attention={name!r} is unknown; choose one of {', '.join(ATTENTION_IMPLS)}")
  return name


def effective_softcap(softcap: float | None, impl: str) -> float | None:
  """The soft cap that attention path `impl` really applies: None on the fused paths."""
  return None if impl in _FUSED_IMPLS else softcap


def constrain(x, *trailing):
  """Activation `x` with logical names: "batch" leading, `trailing` last, None between.

  Every activation of this module has the batch first and its feature axes last
  ([B, T, S, D], [B, S, T, H, K], [B, S, D], ...), whatever sits between.
  """
  names = ("batch",) + (None,) * (x.ndim - 1 - len(trailing)) + tuple(trailing)
  return shd.constrain(x, names)


# ----------------------------------------------------------------------------------
# Token layout and modality masks.
# ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TokenLayout:
  """Ordered per-frame token segments, e.g. ((\"patches\", 16), (\"latents\", 8)).

  Attributes:
    segments: Tuple of (modality name, token count) in the order the tokens are
      concatenated along the S axis.
  """

  segments: tuple[tuple[str, int], ...]

  def __post_init__(self):
    names = [name for name, _ in self.segments]
    if len(set(names)) != len(names):
      raise ValueError(f"Duplicate modality names in layout: {names}")
    for name, count in self.segments:
      if count < 0:
        raise ValueError(f"Negative token count for modality {name!r}: {count}")

  @property
  def names(self) -> tuple[str, ...]:
    return tuple(name for name, _ in self.segments)

  @property
  def num_tokens(self) -> int:
    return sum(count for _, count in self.segments)

  def slice(self, name: str) -> slice:
    """Returns the slice of the S axis that holds modality `name`."""
    start = 0
    for seg_name, count in self.segments:
      if seg_name == name:
        return slice(start, start + count)
      start += count
    raise KeyError(f"Modality {name!r} not in layout {self.names}")

  def modality_of_token(self) -> list[str]:
    """Returns the modality name of every token position, length S."""
    return [name for name, count in self.segments for _ in range(count)]


def space_mask(layout: TokenLayout, rule: Mapping[str, set[str] | frozenset[str]]) -> np.ndarray:
  """Builds the within-frame attention mask from a "who reads whom" rule.

  Args:
    layout: The per-frame token layout.
    rule: Maps each modality (query side) to the set of modalities it may read
      (key side). Every modality of the layout must appear as a key of `rule`.

  Returns:
    A numpy bool array [S, S]; entry [i, j] is True when token i may attend to
    token j. Built in numpy so it is a compile-time constant under jit.
  """
  missing = [name for name in layout.names if name not in rule]
  if missing:
    raise ValueError(f"Attention rule has no entry for modalities {missing}")
  token_mods = layout.modality_of_token()
  mask_SS = np.zeros((len(token_mods), len(token_mods)), dtype=bool)
  for i, query_mod in enumerate(token_mods):
    readable = rule[query_mod]
    for j, key_mod in enumerate(token_mods):
      mask_SS[i, j] = key_mod in readable
  return mask_SS


# Tokenizer encoder [P §3.1]: latents read every modality, patches only themselves.
ENCODER_RULE = {
  "patches": frozenset({"patches"}),
  "latents": frozenset({"patches", "latents"}),
}

# Tokenizer decoder [P §3.1]: patch queries read themselves and the latents; the
# latents only read themselves.
DECODER_RULE = {
  "queries": frozenset({"queries", "latents"}),
  "latents": frozenset({"latents"}),
}

# Dynamics / agent modalities [P §3.2, §3.3], in our chosen token order.
DYNAMICS_MODALITIES = ("spatial", "registers", "tau_d", "action", "agent")


def dynamics_rule(modalities: Sequence[str] = DYNAMICS_MODALITIES) -> dict[str, frozenset[str]]:
  """Attention rule for the dynamics/agent transformer.

  The agent token reads every modality, but no other modality reads the agent
  token, so adding agent tokens in phase 2 cannot change the world-model
  predictions [P §3.3]. All non-agent modalities read each other freely.
  """
  everything = frozenset(modalities)
  non_agent = everything - {"agent"}
  return {m: (everything if m == "agent" else non_agent) for m in modalities}


def time_mask(T: int, window: int | None = None, independent_B=None) -> jax.Array:
  """Builds the causal frame-to-frame mask used by time layers.

  Args:
    T: Number of frames.
    window: If set, frame t only reads frames s with t - window < s <= t, i.e. a
      sliding causal window of `window` frames including itself.
    independent_B: Optional bool [B]. Sequences flagged True are treated as
      independent images: their time mask is the diagonal, so no frame reads any
      other frame [P §4, "30% of videos as separate images"].

  Returns:
    Bool [T, T] when `independent_B` is None, else bool [B, T, T]. Entry [t, s] is
    True when frame t may attend to frame s.
  """
  t_T1 = jnp.arange(T)[:, None]
  s_1T = jnp.arange(T)[None, :]
  mask_TT = s_1T <= t_T1
  if window is not None:
    if window < 1:
      raise ValueError(f"time window must be >= 1, got {window}")
    mask_TT = mask_TT & (s_1T > t_T1 - window)
  if independent_B is None:
    return mask_TT
  independent_B = jnp.asarray(independent_B, dtype=bool)
  diag_TT = jnp.eye(T, dtype=bool)
  return jnp.where(independent_B[:, None, None], diag_TT[None], mask_TT[None])


# ----------------------------------------------------------------------------------
# Small functional pieces.
# ----------------------------------------------------------------------------------


def soft_cap(logits, cap: float | None):
  """Attention-logit soft capping c * tanh(logits / c) [P §3.4]; no-op if cap falsy."""
  if not cap:
    return logits
  return cap * jnp.tanh(logits / cap)


def rope(x_NQHK, positions_Q, base: float = 10_000.0):
  """Rotary position embedding (rotate-half form) over the last axis.

  Args:
    x_NQHK: [..., Q, H, K] queries or keys; K must be even.
    positions_Q: Int [Q] positions of the Q axis.
    base: RoPE frequency base.
  """
  K = x_NQHK.shape[-1]
  if K % 2:
    raise ValueError(f"RoPE needs an even head_dim, got {K}")
  half = K // 2
  freqs_F = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
  angles_QF = positions_Q.astype(jnp.float32)[:, None] * freqs_F[None, :]
  return _rotate_pairs(x_NQHK, jnp.sin(angles_QF), jnp.cos(angles_QF))


def _rotate_pairs(x_NQHK, sin_QF, cos_QF):
  """Rotates the (x[k], x[k + K/2]) pairs of x [..., Q, H, K] by the angles of sin/cos [Q, K/2]."""
  half = x_NQHK.shape[-1] // 2
  sin_Q1F = sin_QF[:, None, :]
  cos_Q1F = cos_QF[:, None, :]
  x = x_NQHK.astype(jnp.float32)
  x1, x2 = x[..., :half], x[..., half:]
  out = jnp.concatenate([x1 * cos_Q1F - x2 * sin_Q1F, x2 * cos_Q1F + x1 * sin_Q1F], axis=-1)
  return out.astype(x_NQHK.dtype)


_ROPE_DIGIT_BITS = 11  # `rope_at` splits a position into base-2048 digits


def rope_at(x_NQHK, positions_Q, base: float = 10_000.0):
  """`rope` accurate at any position in [0, 2**31): the RoPE of a KV cache.

  `rope` rounds position * frequency to float32 before its sin and cos, so its
  angles drift by up to about position * 1e-7 rad: nothing within a training
  window, but a cache keyed by absolute frame index reaches any position. Here a
  position is split into three base-2048 digits, the sin and cos of each digit's
  angle are read from tables built in float64 (`_rope_digit_table`), and the three
  rotations are composed by angle addition: a few float32 ulps from the exact
  rotation at every position, and `rope` to rounding where `rope` is exact.
  """
  K = x_NQHK.shape[-1]
  if K % 2:
    raise ValueError(f"RoPE needs an even head_dim, got {K}")
  positions_Q = jnp.asarray(positions_Q, jnp.int32)
  mask = (1 << _ROPE_DIGIT_BITS) - 1
  sin_QF = cos_QF = None
  for level in range(3):
    digit_Q = (positions_Q >> (_ROPE_DIGIT_BITS * level)) & mask
    sin_DF, cos_DF = _rope_digit_table(K, float(base), level)
    s_QF, c_QF = jnp.take(sin_DF, digit_Q, axis=0), jnp.take(cos_DF, digit_Q, axis=0)
    if sin_QF is None:
      sin_QF, cos_QF = s_QF, c_QF
    else:  # angle addition: (a + b)
      sin_QF, cos_QF = sin_QF * c_QF + cos_QF * s_QF, cos_QF * c_QF - sin_QF * s_QF
  return _rotate_pairs(x_NQHK, sin_QF, cos_QF)


@functools.cache
def _rope_digit_table(head_dim: int, base: float, level: int) -> tuple[np.ndarray, np.ndarray]:
  """float32 (sin, cos) [2048, head_dim // 2] of the angles d * 2048**level * freq, d < 2048.

  The frequencies are `rope`'s float32 ones; the angles and their sin/cos are taken
  in float64 and rounded once.
  """
  half = head_dim // 2
  freqs_F = (base ** (-np.arange(half, dtype=np.float64) / half)).astype(np.float32).astype(np.float64)
  digits_D = np.arange(1 << _ROPE_DIGIT_BITS, dtype=np.float64) * float(1 << (_ROPE_DIGIT_BITS * level))
  angles_DF = digits_D[:, None] * freqs_F[None, :]
  tables = np.sin(angles_DF).astype(np.float32), np.cos(angles_DF).astype(np.float32)
  for t in tables:  # shared by every caller (functools.cache)
    t.flags.writeable = False
  return tables


def attend(q_NQHK, k_NVGK, v_NVGK, mask_NQV, *, softcap: float | None, impl: str = "dense", chunk: int | None = None):
  """Grouped-query attention on explicit queries, keys and values.

  Keys and values are explicit arguments (rather than computed inside) so that a
  later KV cache on time layers can feed cached k/v straight in.

  Args:
    q_NQHK: [..., Q, H, K] queries (already normed and rotated).
    k_NVGK: [..., V, G, K] keys, G kv heads with H % G == 0; the leading axes
      those of the queries.
    v_NVGK: [..., V, G, K] values.
    mask_NQV: Bool, broadcastable to [..., Q, V]; True where attention is allowed.
    softcap: Logit soft cap c, or None. Applied by "dense" and "chunked"; "xla" and
      "cudnn" ignore it (`effective_softcap`): the fused kernels have no logit hook.
    impl: One of `ATTENTION_IMPLS`.
    chunk: Queries per chunk of the "chunked" path; None: `ATTENTION_CHUNK`, read at
      trace time.

  Returns:
    [..., Q, H, K] attention output, in the dtype of `v_NVGK`.
  """
  H, G = q_NQHK.shape[-2], k_NVGK.shape[-2]
  if H % G:
    raise ValueError(f"num_heads={H} must be a multiple of num_kv_heads={G}")
  if impl == "dense":
    return _attend_dense(q_NQHK, k_NVGK, v_NVGK, mask_NQV, softcap)
  if impl == "chunked":
    return _attend_chunked(q_NQHK, k_NVGK, v_NVGK, mask_NQV, softcap, chunk or ATTENTION_CHUNK)
  if impl in _FUSED_IMPLS:
    return _attend_fused(q_NQHK, k_NVGK, v_NVGK, mask_NQV, None if impl == "xla" else impl)
  raise ValueError(f"unknown attention implementation {impl!r}; choose one of {ATTENTION_IMPLS}")


def _attend_dense(q_NQHK, k_NVGK, v_NVGK, mask_NQV, softcap):
  """The reference: every logit of [..., Q, V] at once (see `attend`)."""
  *lead, Q, H, K = q_NQHK.shape
  G = k_NVGK.shape[-2]
  R = H // G
  # Query head h uses kv head h // R, the same grouping as jnp.repeat(k, R, axis=-2).
  q_NQGRK = q_NQHK.reshape(*lead, Q, G, R, K)
  logits_NGRQV = jnp.einsum("...qgrk,...vgk->...grqv", q_NQGRK, k_NVGK, preferred_element_type=jnp.float32)
  logits_NGRQV = soft_cap(logits_NGRQV * K**-0.5, softcap)
  mask_NGRQV = jnp.asarray(mask_NQV)[..., None, None, :, :]
  logits_NGRQV = jnp.where(mask_NGRQV, logits_NGRQV, _NEG_INF)
  probs_NGRQV = jax.nn.softmax(logits_NGRQV, axis=-1)  # float32 softmax
  out_NQGRK = jnp.einsum("...grqv,...vgk->...qgrk", probs_NGRQV.astype(v_NVGK.dtype), v_NVGK)
  return out_NQGRK.reshape(*lead, Q, H, K)


def _attend_chunked(q_NQHK, k_NVGK, v_NVGK, mask_NQV, softcap, chunk: int):
  """The reference over query chunks: exact softmax rows, [..., chunk, V] logits at a time.

  Every query row still sees all V keys in one softmax, so the soft cap and any mask
  apply exactly as in `_attend_dense` (no online-softmax rescaling, and so no extra
  rounding). V is at most the tokens of a frame or the frames of a window, so whole key
  rows fit; what grows is Q x V per head, which the chunks bound. Each chunk is
  rematerialised in the backward pass, so the gradient too holds one chunk's logits:
  the scan's residuals are the query chunks alone (k, v and an unchunked mask are
  loop-invariant).
  """
  *lead, Q, H, K = q_NQHK.shape
  num = -(-Q // max(int(chunk), 1))
  if num <= 1:
    return _attend_dense(q_NQHK, k_NVGK, v_NVGK, mask_NQV, softcap)
  size = -(-Q // num)  # even chunks: the padding is < num rows, not up to a whole chunk
  pad = num * size - Q
  mask_NQV = jnp.asarray(mask_NQV, bool)
  q_NQHK = jnp.pad(q_NQHK, [(0, 0)] * len(lead) + [(0, pad), (0, 0), (0, 0)])
  # [num, ..., size, H, K]: the chunk axis leads for lax.map.
  q_CNQHK = jnp.moveaxis(q_NQHK.reshape(*lead, num, size, H, K), -4, 0)
  per_row_mask = mask_NQV.shape[-2] != 1
  if per_row_mask:  # padded rows may read everything: their outputs are cut off below
    mask_NQV = jnp.pad(mask_NQV, [(0, 0)] * (mask_NQV.ndim - 2) + [(0, pad), (0, 0)], constant_values=True)
    mlead = mask_NQV.shape[:-2]
    mask_CNQV = jnp.moveaxis(mask_NQV.reshape(*mlead, num, size, mask_NQV.shape[-1]), -3, 0)
  else:
    mask_CNQV = None

  @functools.partial(jax.checkpoint, prevent_cse=False)
  def one_chunk(q_nqhk, mask_nqv):
    return _attend_dense(q_nqhk, k_NVGK, v_NVGK, mask_NQV if mask_nqv is None else mask_nqv, softcap)

  out_CNQHK = jax.lax.map(lambda xs: one_chunk(*xs), (q_CNQHK, mask_CNQV))
  out_NQHK = jnp.moveaxis(out_CNQHK, 0, -4).reshape(*lead, num * size, H, K)
  return out_NQHK[..., :Q, :, :]


def _attend_fused(q_NQHK, k_NVGK, v_NVGK, mask_NQV, implementation):
  """`jax.nn.dot_product_attention` over the flattened leading axes (see `attend`).

  The kernel takes [batch, seq, heads, head_dim] with GQA built in (query head h reads
  kv head h // R, as in `_attend_dense`) and the default 1/sqrt(K) scale. It has no
  logit soft cap, so none is applied: a model trained with one computes slightly
  different attention here (tests/models/test_attention_paths.py bounds how much on a
  small model).
  """
  *lead, Q, H, K = q_NQHK.shape
  V, G = k_NVGK.shape[-3], k_NVGK.shape[-2]
  if tuple(k_NVGK.shape[:-3]) != tuple(lead):
    raise ValueError(f"keys {k_NVGK.shape} and queries {q_NQHK.shape} differ in their leading axes")
  n = int(np.prod(lead)) if lead else 1
  mask_NQV = jnp.asarray(mask_NQV, bool)
  if mask_NQV.ndim == 2:  # one mask for every row of the batch (space layers): no copies
    mask_N1QV = mask_NQV[None, None]
  else:  # e.g. the time mask [B, 1, T, T] over lead (B, S): one per flattened row
    mask_N1QV = jnp.broadcast_to(mask_NQV, (*lead, Q, V)).reshape(n, 1, Q, V)
  dtype = v_NVGK.dtype
  out_NQHK = jax.nn.dot_product_attention(
    q_NQHK.astype(dtype).reshape(n, Q, H, K),
    k_NVGK.astype(dtype).reshape(n, V, G, K),
    v_NVGK.reshape(n, V, G, K),
    mask=mask_N1QV,
    implementation=implementation,
  )
  return out_NQHK.reshape(*lead, Q, H, K)


def dense(x, w, in_axes: int = 1):
  """x [..., I...] contracted with w [I..., O...] over the last `in_axes` axes of x: [..., O...].

  The same products as `jnp.einsum` / `@`, computed as ONE 2-D matmul [rows, I] @ [I, O] on
  the leading axes flattened, and reshaped back (free: row-major bitcasts). On XLA:CPU this
  matters for the backward pass: the weight gradient of a 4-D activation contracts three
  axes (B, T, S), which XLA lowered to a transposing copy of the wider operand (for the
  MLP, the [rows, mlp_dim] gradient of the SwiGLU) in front of every weight-gradient matmul;
  on 2-D operands the matmul reads both as they are. The same products: on a standalone
  SwiGLU the values and gradients came out bitwise equal on XLA:CPU (the tests check 1e-6).
  """
  lead, ins = x.shape[: x.ndim - in_axes], x.shape[x.ndim - in_axes :]
  if tuple(w.shape[:in_axes]) != tuple(ins):
    raise ValueError(f"dense: x {x.shape} and w {w.shape} disagree on the {in_axes} contracted axes")
  outs = w.shape[in_axes:]
  n_in, n_out = int(np.prod(ins)), int(np.prod(outs))
  y = jnp.reshape(x, (-1, n_in)) @ jnp.reshape(w, (n_in, n_out))
  return jnp.reshape(y, (*lead, *outs))


def make_param(rngs: nnx.Rngs, init, shape, names):
  """Creates an nnx.Param with logical partitioning names (validated)."""
  if len(names) != len(shape):
    raise ValueError(f"names {names} do not match shape {shape}")
  for name in names:
    if name is not None and name not in LOGICAL_AXES:
      raise ValueError(f"Unknown logical axis {name!r}")
  return nnx.Param(nnx.with_partitioning(init, tuple(names))(rngs.params(), shape, jnp.float32))


def fan_in_init(fan_in: int):
  # Plain fan-in scaling; keeps activations ~unit variance at init.
  return nnx.initializers.truncated_normal(stddev=fan_in**-0.5)


# ----------------------------------------------------------------------------------
# Modules.
# ----------------------------------------------------------------------------------


class RMSNorm(nnx.Module):
  """RMSNorm over the last axis with a learned scale (logical axis "norm")."""

  def __init__(self, dim: int, *, rngs: nnx.Rngs, eps: float = 1e-6):
    self.eps = eps
    self.scale = make_param(rngs, nnx.initializers.ones, (dim,), ("norm",))

  def __call__(self, x):
    return rms_norm(x, self.scale[...], self.eps)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def rms_norm(x, scale, eps: float):
  """x / rms(x) * scale over the last axis, in float32, returned in x's dtype.

  The forward is the plain formula. The backward is written out (`_rms_norm_bwd`): it keeps
  only x and the per-row 1/rms, where autodiff kept full-size copies of the broadcast scale,
  of the broadcast 1/rms and of x / rms for every norm (three [..., D] buffers per norm; on
  XLA:CPU they were separate kernels). Same gradient up to float rounding.
  """
  return _rms_norm_fwd(x, scale, eps)[0]


def _rms_norm_fwd(x, scale, eps):
  x32 = x.astype(jnp.float32)
  inv = jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + eps)
  return (x32 * inv * scale).astype(x.dtype), (x, inv, scale)


def _rms_norm_bwd(eps, res, g):
  """dx = inv * (g scale - xhat * mean(g scale * xhat)), xhat = x * inv; dscale = sum(g * xhat)."""
  del eps
  x, inv, scale = res
  xhat = x.astype(jnp.float32) * inv
  g32 = g.astype(jnp.float32)
  gs = g32 * scale
  dx = inv * (gs - xhat * jnp.mean(gs * xhat, axis=-1, keepdims=True))
  dscale = jnp.sum(g32 * xhat, axis=tuple(range(x.ndim - scale.ndim)))
  return dx.astype(x.dtype), dscale.astype(scale.dtype)


rms_norm.defvjp(_rms_norm_fwd, _rms_norm_bwd)


class Attention(nnx.Module):
  """Multi-head attention with GQA, QKNorm, RoPE and logit soft capping.

  `impl` picks the attention implementation (`ATTENTION_IMPLS`); the fused ones drop
  the soft cap, and `logit_cap` is the cap really applied (the KV-cached decode uses it
  too, so cached and uncached passes agree on every path).
  """

  def __init__(self, *, width, num_heads, num_kv_heads, head_dim, softcap, rngs, dtype, impl: str = "dense"):
    if num_heads % num_kv_heads:
      raise ValueError(f"num_kv_heads={num_kv_heads} must divide num_heads={num_heads}")
    self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
    self.softcap = softcap
    self.impl = check_attention(impl)
    if impl == "cudnn" and jnp.dtype(dtype) not in (jnp.bfloat16, jnp.float16):
      raise ConfigError(
        f"--config.model.attention=cudnn needs --config.model.dtype=bfloat16 (or float16), "
        f"not {jnp.dtype(dtype).name}: cuDNN flash attention has no float32 kernel"
      )
    self.dtype = dtype
    init_in = fan_in_init(width)
    self.wq = make_param(rngs, init_in, (width, num_heads, head_dim), ("embed", "heads", "head_dim"))
    self.wk = make_param(rngs, init_in, (width, num_kv_heads, head_dim), ("embed", "kv_heads", "head_dim"))
    self.wv = make_param(rngs, init_in, (width, num_kv_heads, head_dim), ("embed", "kv_heads", "head_dim"))
    self.wo = make_param(
      rngs, fan_in_init(num_heads * head_dim), (num_heads, head_dim, width), ("heads", "head_dim", "embed")
    )
    # QKNorm [P §3.4]: RMSNorm of q and k per head over head_dim.
    self.q_norm = RMSNorm(head_dim, rngs=rngs)
    self.k_norm = RMSNorm(head_dim, rngs=rngs)

  def project_kv(self, x_NVD, positions_V):
    """Returns normed, rotated keys and values [..., V, G, K] (the future cache entries)."""
    x = x_NVD.astype(self.dtype)
    k_NVGK = dense(x, self.wk[...].astype(self.dtype))
    v_NVGK = dense(x, self.wv[...].astype(self.dtype))
    k_NVGK = rope(self.k_norm(k_NVGK), positions_V)
    return constrain(k_NVGK, "kv_heads", "head_dim"), constrain(v_NVGK, "kv_heads", "head_dim")

  def project_kv_unrotated(self, x_NVD):
    """Normed keys (before RoPE) and values [..., V, G, K].

    The decode rotates them itself (`rope_at`, at any position; see
    `Block.decode_time`), and a KV cache stores a frame's keys rotated at its index.
    """
    x = x_NVD.astype(self.dtype)
    k_NVGK = dense(x, self.wk[...].astype(self.dtype))
    v_NVGK = dense(x, self.wv[...].astype(self.dtype))
    return constrain(self.k_norm(k_NVGK), "kv_heads", "head_dim"), constrain(v_NVGK, "kv_heads", "head_dim")

  def project_q_unrotated(self, x_NQD):
    """Normed queries before RoPE [..., Q, H, K] (the decode rotates them with `rope_at`)."""
    x = x_NQD.astype(self.dtype)
    return self.q_norm(dense(x, self.wq[...].astype(self.dtype)))

  def project_q(self, x_NQD, positions_Q):
    x = x_NQD.astype(self.dtype)
    q_NQHK = dense(x, self.wq[...].astype(self.dtype))
    return constrain(rope(self.q_norm(q_NQHK), positions_Q), "heads", "head_dim")

  @property
  def logit_cap(self) -> float | None:
    """The soft cap this layer's attention applies (None on the fused paths)."""
    return effective_softcap(self.softcap, self.impl)

  def project_out(self, out_NQHK):
    """Per-head outputs [..., Q, H, K] -> the residual stream's width [..., Q, D]."""
    out_NQHK = constrain(out_NQHK, "heads", "head_dim")
    return constrain(dense(out_NQHK, self.wo[...].astype(self.dtype), in_axes=2), "embed")

  def __call__(self, x_NQD, mask_NQV, positions_Q):
    """Self-attention over the second-to-last axis of x_NQD."""
    q_NQHK = self.project_q(x_NQD, positions_Q)
    k_NVGK, v_NVGK = self.project_kv(x_NQD, positions_Q)
    out_NQHK = attend(q_NQHK, k_NVGK, v_NVGK, mask_NQV, softcap=self.softcap, impl=self.impl)
    return self.project_out(out_NQHK)


class SwiGLU(nnx.Module):
  """SwiGLU MLP: down(silu(gate(x)) * up(x))."""

  def __init__(self, *, width, mlp_dim, rngs, dtype):
    self.dtype = dtype
    self.w_gate = make_param(rngs, fan_in_init(width), (width, mlp_dim), ("embed", "mlp"))
    self.w_up = make_param(rngs, fan_in_init(width), (width, mlp_dim), ("embed", "mlp"))
    self.w_down = make_param(rngs, fan_in_init(mlp_dim), (mlp_dim, width), ("mlp", "embed"))

  def __call__(self, x_ND):
    x = x_ND.astype(self.dtype)
    gate = constrain(dense(x, self.w_gate[...].astype(self.dtype)), "mlp")
    up = constrain(dense(x, self.w_up[...].astype(self.dtype)), "mlp")
    return constrain(dense(jax.nn.silu(gate) * up, self.w_down[...].astype(self.dtype)), "embed")


class Block(nnx.Module):
  """Pre-norm transformer block, either space-only or causal time-only."""

  def __init__(
    self,
    *,
    is_time: bool,
    width,
    num_heads,
    num_kv_heads,
    head_dim,
    mlp_dim,
    softcap,
    rngs,
    dtype,
    attention: str = "dense",
  ):
    self.is_time = is_time
    self.attn_norm = RMSNorm(width, rngs=rngs)
    self.attn = Attention(
      width=width,
      num_heads=num_heads,
      num_kv_heads=num_kv_heads,
      head_dim=head_dim,
      softcap=softcap,
      rngs=rngs,
      dtype=dtype,
      impl=attention,
    )
    self.mlp_norm = RMSNorm(width, rngs=rngs)
    self.mlp = SwiGLU(width=width, mlp_dim=mlp_dim, rngs=rngs, dtype=dtype)

  def __call__(self, x_BTSD, space_mask_SS, time_mask_BTT):
    B, T, S, D = x_BTSD.shape
    x_BTSD = checkpoint_name(constrain(x_BTSD, "embed"), "layer_input")  # names for the remat policies
    h_BTSD = self.attn_norm(x_BTSD)
    if self.is_time:
      # Axial time attention: each token position s reads position s of frames
      # <= t. Our choice: RoPE over the absolute frame index within the sequence.
      h_BSTD = jnp.swapaxes(h_BTSD, 1, 2)
      mask_B1TT = time_mask_BTT[:, None]  # broadcast over the S axis
      a_BSTD = self.attn(h_BSTD, mask_B1TT, jnp.arange(T))
      a_BTSD = jnp.swapaxes(a_BSTD, 1, 2)
    else:
      # Space attention within one frame. Our choice: 1-D RoPE over the token
      # index inside the frame (patches in raster order, then the other segments).
      a_BTSD = self.attn(h_BTSD, space_mask_SS, jnp.arange(S))
    a_BTSD = checkpoint_name(a_BTSD, "attn_out")
    x_BTSD = constrain(x_BTSD + a_BTSD.astype(x_BTSD.dtype), "embed")
    m_BTSD = self.mlp(self.mlp_norm(x_BTSD))
    return constrain(x_BTSD + m_BTSD.astype(x_BTSD.dtype), "embed")

  def decode(
    self,
    x_BSD,
    space_mask_SS,
    cache_k_BSMGK=None,
    cache_v_BSMGK=None,
    cache_pos_M=None,
    cache_valid_M=None,
    query_pos=None,
    keys_rotated: bool = False,
  ):
    """Applies the block to ONE frame, time layers reading cached past frames.

    Args:
      x_BSD: [B, S, D] tokens of the frame being decoded.
      space_mask_SS: Bool [S, S] within-frame mask (space layers only).
      cache_k_BSMGK: Time layers: unrotated keys of M cached past frames.
      cache_v_BSMGK: Time layers: their values.
      cache_pos_M: Time layers: int RoPE positions of the cached frames.
      cache_valid_M: Time layers: bool, False for empty cache slots.
      query_pos: Time layers: int RoPE position of the current frame.
      keys_rotated: Time layers: the cached keys already carry RoPE.

    Returns:
      (y_BSD, k_BSGK, v_BSGK): the block output and, for time layers, the current
      frame's unrotated keys and values (the entries a cache would store); None
      for space layers.
    """
    x_BSD = constrain(x_BSD, "embed")
    h_BSD = self.attn_norm(x_BSD)
    k_BSGK = v_BSGK = None
    if self.is_time:
      a_BSD, k_BSGK, v_BSGK = self.decode_time(
        h_BSD,
        cache_k_BSMGK,
        cache_v_BSMGK,
        cache_pos_M,
        cache_valid_M,
        query_pos,
        keys_rotated=keys_rotated,
      )
    else:
      a_BSD = self.attn(h_BSD, space_mask_SS, jnp.arange(x_BSD.shape[-2]))
    x_BSD = constrain(x_BSD + a_BSD.astype(x_BSD.dtype), "embed")
    m_BSD = self.mlp(self.mlp_norm(x_BSD))
    return constrain(x_BSD + m_BSD.astype(x_BSD.dtype), "embed"), k_BSGK, v_BSGK

  def decode_time(
    self, h_BSD, cache_k_BSMGK, cache_v_BSMGK, cache_pos_M, cache_valid_M, query_pos, keys_rotated: bool = False
  ):
    """Time attention of one frame over cached frames plus itself.

    Each token position s reads position s of the cached frames, exactly as the
    axial time layer of `__call__` does. RoPE is relative, so only the offsets
    query_pos - cache_pos_M matter. Every rotation here is `rope_at`, exact at any
    position, so a cache may key its frames by absolute index: with `keys_rotated`
    the cached keys already carry it at cache_pos_M (`rotate_cached_keys`, or a
    cache that stores them rotated, `inference.kv_cache`) and are only read.

    Whatever `attention` implementation the layer uses, this one query per position
    runs the dense two-block softmax below, with the layer's `logit_cap`: a
    fused-path model decodes without the cap, as its uncached pass computes.

    The cache is read in its stored [B, S, M, G, K] order, never transposed: the
    two dots over it take the kv-head axis G as a plain axis, not a batch axis
    (as a batch axis it would have to lead M, and XLA copied every cache layer
    into that order on every pass: on CPU that copy, not the read, was most of
    the cost of a long cache). So the first dot scores every query head against
    every kv head; only each head's own group is kept for the softmax, which runs
    on these small logits laid out [B, S, G, R, M], and the second dot reads the
    probabilities back with zeros for the other groups.
    """
    attn = self.attn
    h_BS1D = h_BSD[:, :, None]
    query_pos_1 = jnp.reshape(jnp.asarray(query_pos, jnp.int32), (1,))
    q_BS1HK = constrain(rope_at(attn.project_q_unrotated(h_BS1D), query_pos_1), "heads", "head_dim")
    k_BS1GK, v_BS1GK = attn.project_kv_unrotated(h_BS1D)
    cache_k_BSMGK = constrain(cache_k_BSMGK.astype(attn.dtype), "kv_heads", "head_dim")
    if not keys_rotated:
      cache_k_BSMGK = rope_at(cache_k_BSMGK, cache_pos_M)
    B, S, M, G, K = cache_k_BSMGK.shape
    H = q_BS1HK.shape[-2]
    R = H // G
    q_BSHK = q_BS1HK[:, :, 0]
    q_BSGRK = q_BSHK.reshape(B, S, G, R, K)
    k_self_BSGK = rope_at(k_BS1GK, query_pos_1)[:, :, 0]
    # lax.dot_general in the cache's own axis order (einsum may list the contracted
    # (m, g) as (g, m), which again transposes the cache). Query head h = g * R + r
    # belongs to kv head g (the grouping of `attend`).
    batch = ((0, 1), (0, 1))
    logits_BSMGH = jax.lax.dot_general(cache_k_BSMGK, q_BSHK, (((4,), (3,)), batch), preferred_element_type=jnp.float32)
    # Each head's own group by static slices (jnp.diagonal lowers to a gather, which
    # XLA:CPU ran per element over the [.., M, G, G, R] logits: slower than the dot).
    logits_BSMGGR = logits_BSMGH.reshape(B, S, M, G, G, R)
    logits_BSGRM = jnp.stack([jnp.swapaxes(logits_BSMGGR[:, :, :, g, g], 2, 3) for g in range(G)], axis=2)
    # From here the softmax of the reference: [cache | self] logits, capped, masked.
    logits_BSGR1 = jnp.einsum("bsgrk,bsgk->bsgr", q_BSGRK, k_self_BSGK, preferred_element_type=jnp.float32)[..., None]
    logits_BSGRM = soft_cap(logits_BSGRM * K**-0.5, attn.logit_cap)
    logits_BSGR1 = soft_cap(logits_BSGR1 * K**-0.5, attn.logit_cap)
    logits_BSGRM = jnp.where(jnp.asarray(cache_valid_M, bool), logits_BSGRM, _NEG_INF)
    probs_BSGRV = jax.nn.softmax(jnp.concatenate([logits_BSGRM, logits_BSGR1], axis=-1), axis=-1)
    probs_BSGRV = probs_BSGRV.astype(attn.dtype)
    probs_BSMGR = jnp.transpose(probs_BSGRV[..., :M], (0, 1, 4, 2, 3))
    own_GG = np.eye(G, dtype=bool)[:, :, None]
    probs_BSMGH = jnp.where(own_GG, probs_BSMGR[:, :, :, :, None, :], 0).reshape(B, S, M, G, H)
    cache_v_BSMGK = constrain(cache_v_BSMGK.astype(attn.dtype), "kv_heads", "head_dim")
    out_BSHK = jax.lax.dot_general(probs_BSMGH, cache_v_BSMGK, (((2, 3), (2, 3)), batch))
    out_BSGRK = probs_BSGRV[..., M:] * v_BS1GK[:, :, 0, :, None, :]
    out_BSHK = out_BSHK + out_BSGRK.reshape(B, S, H, K)
    a_BSD = attn.project_out(out_BSHK)
    return a_BSD, k_BS1GK[:, :, 0], v_BS1GK[:, :, 0]


def checkpoint_policy(name: str):
  """The jax.checkpoint policy called `name` in `REMAT_POLICIES`."""
  if name == "nothing":
    return jax.checkpoint_policies.nothing_saveable
  if name == "inputs":
    return jax.checkpoint_policies.save_only_these_names("layer_input")
  if name == "attention":
    return jax.checkpoint_policies.save_only_these_names("layer_input", "attn_out")
  raise ConfigError(f"--config.model.remat_policy={name!r} is unknown; choose one of {', '.join(REMAT_POLICIES)}")


def check_scan_depth(depth: int, time_every: int, setting: str = "--config.model.depth") -> None:
  """ConfigError unless `depth` is a positive multiple of `time_every` (scanned layers)."""
  if depth < time_every or depth % time_every:
    raise ConfigError(
      f"{setting}={depth} is not a positive multiple of --config.model.time_every={time_every}: scanned "
      f"layers repeat one group of time_every layers; change the depth or set --config.model.scan_layers=False"
    )


class LayerGroup(nnx.Module):
  """One scanned unit: time_every - 1 space layers, then one causal time layer."""

  def __init__(self, *, time_every: int, **block_kwargs):
    self.blocks = nnx.List([Block(is_time=j == time_every - 1, **block_kwargs) for j in range(time_every)])

  def __call__(self, x_BTSD, space_mask_SS, time_mask_BTT):
    for block in self.blocks:
      x_BTSD = block(x_BTSD, space_mask_SS, time_mask_BTT)
    return x_BTSD

  def decode(
    self,
    x_BSD,
    space_mask_SS,
    cache_k_BSMGK,
    cache_v_BSMGK,
    cache_pos_M,
    cache_valid_M,
    query_pos,
    keys_rotated: bool = False,
  ):
    """`Block.decode` through the group: (y_BSD, k_BSGK, v_BSGK) of its time layer."""
    last = len(self.blocks) - 1
    for j in range(last):
      x_BSD, _, _ = self.blocks[j].decode(x_BSD, space_mask_SS)
    return self.blocks[last].decode(
      x_BSD,
      space_mask_SS,
      cache_k_BSMGK,
      cache_v_BSMGK,
      cache_pos_M,
      cache_valid_M,
      query_pos,
      keys_rotated=keys_rotated,
    )


class Transformer(nnx.Module):
  """Stack of space layers with a causal time layer every `time_every` layers.

  Layer i (0-based) is a time layer when (i + 1) % time_every == 0, i.e. the last
  layer of each group, following [P Fig 2b] (3 space layers then 1 time layer). With
  `scan_layers` the depth must be a positive multiple of time_every and the groups
  run under one `jax.lax.scan` (module doc); without it, a stack shallower than
  `time_every` has no time layers and is purely per-frame.

  `remat` recomputes activations in the backward pass: per scanned group with the
  `remat_policy` of `REMAT_POLICIES` (per layer when unscanned).

  `attention` is the attention implementation of every layer (`ATTENTION_IMPLS`).
  """

  def __init__(
    self,
    *,
    width: int,
    depth: int,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    mlp_dim: int,
    time_every: int,
    softcap: float | None,
    rngs: nnx.Rngs,
    dtype=jnp.float32,
    remat: bool = False,
    scan_layers: bool = True,
    remat_policy: str = "nothing",
    depth_setting: str = "--config.model.depth",
    attention: str = "dense",
  ):
    if time_every < 1:
      raise ValueError(f"time_every must be >= 1, got {time_every}")
    checkpoint_policy(remat_policy)  # an unknown name fails here, not at the first call
    self.attention = check_attention(attention)
    self.width = width
    self.dtype = dtype
    self.remat = remat
    self.remat_policy = remat_policy
    self.scan_layers = bool(scan_layers)
    self.time_every = time_every
    self.num_kv_heads, self.head_dim = num_kv_heads, head_dim
    self.time_layers = tuple((i + 1) % time_every == 0 for i in range(depth))
    block_kwargs = dict(
      width=width,
      num_heads=num_heads,
      num_kv_heads=num_kv_heads,
      head_dim=head_dim,
      mlp_dim=mlp_dim,
      softcap=softcap,
      dtype=dtype,
      attention=attention,
    )
    if self.scan_layers:
      check_scan_depth(depth, time_every, depth_setting)
      num_groups = depth // time_every

      @nnx.split_rngs(splits=num_groups)
      @nnx.vmap(in_axes=0, out_axes=0, axis_size=num_groups, transform_metadata={nnx.PARTITION_NAME: LAYER_AXIS})
      def make_groups(rngs):
        return LayerGroup(time_every=time_every, rngs=rngs, **block_kwargs)

      self.groups = make_groups(rngs)  # every Param stacked [num_groups, ...]
    else:
      self.blocks = nnx.List([Block(is_time=is_time, rngs=rngs, **block_kwargs) for is_time in self.time_layers])
    self.final_norm = RMSNorm(width, rngs=rngs)

  @property
  def num_groups(self) -> int:
    """Scanned units (= time layers) of a scanned stack."""
    return len(self.time_layers) // self.time_every

  def _scan_groups(self, unit, x, xs=None):
    """lax.scan of `unit(group, x, xs_g) -> (x, ys_g)` over the stacked groups."""
    graphdef, state = nnx.split(self.groups)

    def body(x, sliced):
      state_g, xs_g = sliced
      # One group's Params still carry the stacked "layers" metadata; nothing reads it here.
      return unit(nnx.merge(graphdef, state_g), x, xs_g)

    return jax.lax.scan(body, x, (state, xs))

  def __call__(self, x_BTSD, *, space_mask_SS, time_mask_BTT):
    """Applies the stack.

    Args:
      x_BTSD: [B, T, S, D] tokens.
      space_mask_SS: Bool [S, S] within-frame mask (see `space_mask`).
      time_mask_BTT: Bool [B, T, T] or [T, T] frame mask (see `time_mask`).

    Returns:
      [B, T, S, D] after the final RMSNorm.
    """
    B, T, S, D = x_BTSD.shape
    space_mask_SS = jnp.asarray(space_mask_SS, dtype=bool)
    time_mask_BTT = jnp.asarray(time_mask_BTT, dtype=bool)
    if time_mask_BTT.ndim == 2:
      time_mask_BTT = time_mask_BTT[None]
    if space_mask_SS.shape != (S, S):
      raise ValueError(f"space mask {space_mask_SS.shape} does not match S={S}")
    if time_mask_BTT.shape[-2:] != (T, T):
      raise ValueError(f"time mask {time_mask_BTT.shape} does not match T={T}")
    policy = checkpoint_policy(self.remat_policy) if self.remat else None
    x_BTSD = constrain(x_BTSD, "embed")

    if self.scan_layers:

      def run_group(group, x_BTSD, _):
        return group(x_BTSD, space_mask_SS, time_mask_BTT), None

      if self.remat:  # a pure function of (params, x): safe inside any lax loop
        run_group = jax.checkpoint(run_group, policy=policy, prevent_cse=False)
      x_BTSD, _ = self._scan_groups(run_group, x_BTSD)
      return self.final_norm(x_BTSD)

    def run_block(block, x_BTSD, space_mask_SS, time_mask_BTT):
      return block(x_BTSD, space_mask_SS, time_mask_BTT)

    if self.remat:
      run_block = nnx.remat(run_block, policy=policy)
    for block in self.blocks:
      x_BTSD = run_block(block, x_BTSD, space_mask_SS, time_mask_BTT)
    return self.final_norm(x_BTSD)

  @property
  def time_layer_indices(self) -> tuple[int, ...]:
    """Layer indices of the time layers, in order (the cache's L axis)."""
    return tuple(i for i, is_time in enumerate(self.time_layers) if is_time)

  def rotate_cached_keys(self, cache_k_xMGK, cache_pos_M):
    """Applies RoPE (`rope_at`) to unrotated cached keys [..., M, G, K], for `decode(keys_rotated=True)`."""
    return rope_at(cache_k_xMGK.astype(self.dtype), cache_pos_M)

  def decode(
    self,
    x_BSD,
    *,
    space_mask_SS,
    cache_k_LBSMGK,
    cache_v_LBSMGK,
    cache_pos_M,
    cache_valid_M,
    query_pos,
    keys_rotated: bool = False,
  ):
    """Applies the stack to ONE frame whose time layers read a KV cache.

    Equivalent to `__call__` on the cached frames plus this one, read at the last
    frame, when the cache holds the time-layer keys/values those frames had
    (uncached RoPE positions reproduced by `cache_pos_M` and `query_pos`). A
    scanned stack scans its groups with the cache's L axis (one time layer each).

    Args:
      x_BSD: [B, S, D] tokens of the current frame.
      space_mask_SS: Bool [S, S] within-frame mask.
      cache_k_LBSMGK: Unrotated keys, stacked over the time layers (L of them, in
        `time_layer_indices` order), M cached frames each; or a sequence of the L
        per-layer arrays [B, S, M, G, K]. XLA copies a layer's slice of a stacked
        array for every dot that reads it, so a cache read in several passes keeps
        one array per layer (`inference.kv_cache`).
      cache_v_LBSMGK: The matching values (stacked, or a sequence likewise).
      cache_pos_M: Int RoPE positions of the cached frames (any int32: `rope_at`).
      cache_valid_M: Bool, False for empty cache slots.
      query_pos: Int RoPE position of the current frame.
      keys_rotated: The cached keys already carry RoPE at cache_pos_M
        (`rotate_cached_keys`); they are only read.

    Returns:
      (y_BSD, k_LBSGK, v_LBSGK): output after the final RMSNorm and the current
      frame's unrotated time-layer keys/values (to write into the cache).
    """
    space_mask_SS = jnp.asarray(space_mask_SS, dtype=bool)
    if self.scan_layers:
      if isinstance(cache_k_LBSMGK, (list, tuple)):  # the scan slices one stacked array
        cache_k_LBSMGK, cache_v_LBSMGK = jnp.stack(cache_k_LBSMGK), jnp.stack(cache_v_LBSMGK)
      if cache_k_LBSMGK.shape[0] != self.num_groups:
        raise ValueError(f"cache holds {cache_k_LBSMGK.shape[0]} time layers, the model {self.num_groups}")

      def decode_group(group, x_BSD, cache_kv):
        y_BSD, k_BSGK, v_BSGK = group.decode(
          x_BSD,
          space_mask_SS,
          cache_kv[0],
          cache_kv[1],
          cache_pos_M,
          cache_valid_M,
          query_pos,
          keys_rotated=keys_rotated,
        )
        return y_BSD, (k_BSGK, v_BSGK)

      x_BSD, (k_LBSGK, v_LBSGK) = self._scan_groups(decode_group, x_BSD, (cache_k_LBSMGK, cache_v_LBSMGK))
      return self.final_norm(x_BSD), k_LBSGK, v_LBSGK
    new_k, new_v = [], []
    layer = 0
    for block in self.blocks:
      if block.is_time:
        x_BSD, k_BSGK, v_BSGK = block.decode(
          x_BSD,
          space_mask_SS,
          cache_k_LBSMGK[layer],
          cache_v_LBSMGK[layer],
          cache_pos_M,
          cache_valid_M,
          query_pos,
          keys_rotated=keys_rotated,
        )
        new_k.append(k_BSGK)
        new_v.append(v_BSGK)
        layer += 1
      else:
        x_BSD, _, _ = block.decode(x_BSD, space_mask_SS)
    B, S, _ = x_BSD.shape
    if new_k:
      k_LBSGK, v_LBSGK = jnp.stack(new_k), jnp.stack(new_v)
    else:  # no time layers: an empty stack keeps the cache code uniform
      k_LBSGK = v_LBSGK = jnp.zeros((0, B, S, 1, 1), self.dtype)
    return self.final_norm(x_BSD), k_LBSGK, v_LBSGK
