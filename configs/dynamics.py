r"""Phase 1b: the interactive dynamics model, shortcut forcing on frozen-tokenizer latents.

Run (after the tokenizer and the encode job, see configs/encode.py):

  python -m dreamer4.main --config=configs/dynamics.py:toy --workdir=runs/toy/dynamics \
      --config.data.path=runs/toy/data --config.tokenizer_workdir=runs/toy/tokenizer

Variants: toy (the laptop default), tiny (seconds; tests), paper (the paper's Minecraft
dynamics model: about 1.6B parameters, 256 spatial tokens from 512x16 latents, context 192,
batch lengths 64 / 256, bf16 compute, remat, FSDP; check what fits first with
  python -m dreamer4.main --dry_run --config=configs/dynamics.py:paper --cpu_devices=8 \
      --config.train.batch_size=8
which takes the latent shape from --config.data.latent_shape when no tokenizer is named),
craftax (Craftax-Classic at a 2-core CPU budget: the toy model on 27 latents grouped 3 per token,
6000 steps; the dynamics stage of configs/pipeline.py:craftax), craftax_large (Craftax-Classic on
one 80 GB GPU: width 768, 16 layers, GQA, bf16, remat, on the latents of tokenizer.py:craftax_large;
check what fits first with
  python -m dreamer4.main --dry_run --config=configs/dynamics.py:craftax_large --cpu_devices=8 \
      --config.train.batch_size=8
).
"""

from __future__ import annotations

import ml_collections

from configs import common
from configs import tokenizer as tokenizer_config

VARIANTS = ("toy", "tiny", "paper", "craftax", "craftax_large")


def model_config(variant: str) -> ml_collections.ConfigDict:
  """Dynamics size. Widths/depths are our choice (paper: 1.6B total, unstated shapes)."""
  c = ml_collections.ConfigDict()
  c.group = 2  # latent tokens concatenated per spatial token (paper: 512x16 -> 256x32)
  c.num_registers = 2  # S_r learned register tokens per frame (paper: unstated)
  c.k_max = 64  # finest step size 1/k_max; the tau/d grid (paper: unstated, 64 common)
  c.width = 128  # model width
  c.depth = 8  # layers (a time layer every time_every)
  c.num_heads = 4  # query heads
  c.num_kv_heads = 2  # GQA key/value heads (the paper uses GQA everywhere in the dynamics)
  c.head_dim = 32  # per-head width
  c.mlp_dim = 512  # SwiGLU hidden width
  c.time_every = 2  # a causal time layer every N layers (the N-th of each group); the
  # toy uses 2 (paper: 4): with 8 layers, 4 causes only one time layer
  # followed by space layers, and next-frame latent error fell slowly
  c.softcap = 50.0  # attention-logit soft cap
  c.context = 16  # C: sliding time window in frames; must be < data.long_window
  c.dtype = "float32"  # compute dtype (params are float32)
  c.remat = False  # rematerialise each block
  c.remat_policy = "nothing"  # with remat, what each scanned layer group saves: "nothing" (its input
  # only), "inputs" (every layer's input), "attention" (+ attention outputs)
  # Attention implementation (dreamer4/models/transformer.py, ATTENTION_IMPLS): "dense" (the
  # reference einsum), "chunked" (the same per chunk of 128 queries: logits memory bounded by
  # the chunk, soft cap kept; at <= 128 queries, a frame's tokens or a window's frames, it is
  # dense), "xla" / "cudnn" (jax.nn.dot_product_attention; cudnn: NVIDIA GPUs in bfloat16
  # only). The fused paths have no logit soft cap: they DROP softcap.
  c.attention = "dense"
  # Scan groups of time_every layers (depth a multiple of time_every): program size, compile time
  # and (with remat) activation memory stop growing with depth. Off for the CPU sizes: without
  # remat a scanned step measured 1.35x slower (depth 8, width 128; benchmarks/scan_layers.py).
  c.scan_layers = False
  # A learned absolute embedding per spatial token (our choice; the paper names only RoPE). With
  # RoPE alone a token's value carries no "where", which the agent token, pooling the frame, needs:
  # a probe on the agent embedding after 300 agent steps reaches 34% held-out next-action accuracy
  # with it (fixed toy layout) and memorises without it (24% held-out, random layout).
  c.spatial_pos = True
  if variant == "tiny":
    c.spatial_pos = False  # the test-sized model; tests/models/test_dynamics.py covers both
    c.num_registers = 1
    c.k_max = 8
    c.width = 32
    c.depth = 2
    c.num_heads = 2
    c.num_kv_heads = 1
    c.head_dim = 16
    c.mlp_dim = 64
    c.time_every = 2
    c.context = 4
  if variant == "paper":
    # Widths/depths are ours (paper: "1.6B" [P §4]); close to a third-party reimplementation
    # (IamCreateAI/Dreamerv4-MC: width 2048, 32 layers, 16 heads, 4 registers), with GQA (4 KV heads)
    # and a SwiGLU hidden width that brings the total to 1.59B.
    c.group = 2  # 512x16 latents -> 256 spatial tokens x 32 [P App. A]
    c.spatial_pos = False  # RoPE only, as the paper states
    c.num_registers = 4
    c.k_max = 64
    c.width = 2048
    c.depth = 32
    c.num_heads = 16
    c.num_kv_heads = 4  # GQA in every layer of the dynamics model [P §3.4]
    c.head_dim = 128
    c.mlp_dim = 6400
    c.time_every = 4  # time attention in one layer of four [P §3.4]
    c.context = 192  # C = 192 frames (9.6 s at 20 FPS) [P §4]
    # Mixed precision: parameters, gradients and Adam state stay float32; matmuls and the
    # residual stream run in bfloat16; RMSNorm, RoPE, attention logits/softmax, the
    # readout and the loss are computed in float32.
    c.dtype = "bfloat16"
    c.remat = True  # recompute each block in the backward pass (activation memory)
    c.scan_layers = True  # one scanned layer group: memory and program flat in depth
  if variant == "craftax":
    # tokenizer.py:craftax has 27 latents of 3 cells each: 3 per spatial token gives 9 tokens
    # per frame, one row of 9 cells each (the toy has 8 tokens of 8 patches).
    c.group = 3
  if variant == "craftax_large":
    # Our sizes for one GPU (the paper has no Craftax dynamics model): 6x the toy's width, 2x its
    # depth. spatial_pos stays on: Craftax's view is player-centred with a fixed inventory strip.
    c.group = 2  # 64x16 latents -> 32 spatial tokens x 32 (the paper's factor [P App. A])
    c.num_registers = 4  # S_r (the paper variant's)
    c.k_max = 64  # finest step 1/64, as the toy and paper variants
    c.width = 768  # model width
    c.depth = 16  # layers: 4 time layers
    c.num_heads = 8  # query heads (head_dim x num_heads = width)
    c.num_kv_heads = 2  # GQA, 4 query heads per KV head as in the paper variant [P §3.4]
    c.head_dim = 96  # per-head width
    c.mlp_dim = 3072  # SwiGLU hidden width: 4 x width
    c.time_every = 4  # time attention in one layer of four [P §3.4]
    c.context = 64  # C: 64 frames; the short windows (32) fit, the long ones (96) exceed it
    c.dtype = "bfloat16"  # bf16 matmuls and residual stream (norms, softmax, loss in float32)
    c.remat = True  # recompute each block in the backward pass (activation memory)
    c.scan_layers = True  # one scanned layer group: memory and program flat in depth
  return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = arg or "toy"
  if variant not in VARIANTS:
    raise ValueError(f"configs/dynamics.py: unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")
  c = ml_collections.ConfigDict()
  c.phase = "dynamics"  # which phase dreamer4.main runs
  c.variant = variant
  c.tokenizer_workdir = ""  # workdir of the finished tokenizer (frozen; its latents must be in the store)
  c.data = tokenizer_config.data_config(window=8)
  c.data.long_window = 20  # T2: long windows (> model.context); 0 disables alternating lengths
  # (num_latents, latent_dim) of the tokenizer's latents, used only by --dry_run without a
  # tokenizer_workdir; a real run reads them from the store's latents.
  c.data.latent_shape = ml_collections.FieldReference(None, field_type=tuple)
  c.model = model_config(variant)

  c.loss = ml_collections.ConfigDict()
  c.loss.bootstrap_fraction = 0.25  # rows trained with Eq-4 step sizes (3 forward passes); the rest flow-only
  c.loss.independent_fraction = 0.3  # rows trained as independent images (diagonal time mask) [P §4]
  c.loss.ramp = True  # ramp weight 0.9 tau + 0.1 [P Eq 8]; the toy turns it off (below)
  c.loss.rms_decay = 0.99  # EMA decay of the RMS loss normaliser

  c.optim = common.optim_config(lr=1e-3, warmup_steps=100)
  c.mesh = common.mesh_config("data")

  if variant in ("toy", "craftax"):  # craftax trains the toy model
    # Our choice at toy scale: the ramp weight down-weights the low-tau frames, where the action
    # decides the next frame, by up to 10x, and bootstrap rows slow the flow term. In a dot
    # world (one dot on a 4x4 grid moved by a random action; width 64, depth 4, batch 16),
    # 900 steps give MSE true / shuffled actions 0.215 / 0.218 with the ramp and bootstrap
    # share 0.5, 0.203 / 0.228 without the ramp, 0.182 / 0.229 without the ramp and with
    # share 0.25. tests/objectives/test_action_learning.py trains these settings on a 3x3 dot
    # world. The paper variant keeps the ramp.
    c.loss.ramp = False

  # 6000 steps (toy): with 3000 the toy model still got 21% of vertical moves wrong (a vertical
  # move is the one move that crosses dynamics tokens, each token one grid row of the row-aligned
  # latents) and that error was still falling (82.5 / 40.3 / 21.9% at steps 2000 / 2500 / 3000);
  # held-out agent-cell accuracy at K = 4, first / 16th generated frame: 93.6 / 29.9% at 3000
  # steps, 98.7 / 85.1% at 6000 (docs/RESULTS.md).
  c.train = common.train_config(
    batch_size=16, num_steps=6000, eval_every=0, summary_every=0
  )  # eval at the end only (K=64 rollouts are slow on CPU)
  c.train.long_every = 10  # every N-th step uses a long window (T2)
  c.train.long_final_steps = 150  # the last N steps use long windows only (long finetune)

  c.eval = ml_collections.ConfigDict()
  # Held-out batches per evaluation: 12 x 16 windows. With 2 (32 windows, 14 of them still
  # real at the 16th generated frame) a horizon step's agent-cell accuracy moved by 6-13
  # points with the sample; K = 4 measured on 384 windows gave 88.8% at the first frame where
  # the 2-batch evaluation had read 100%.
  c.eval.num_batches = 12
  c.eval.sweep_batches = 2  # the other K of sampling_steps only on the first 2 batches (cost)
  c.eval.context_frames = 4  # C_eval: true frames given before generating
  c.eval.horizon = 16  # frames generated (window = context_frames + horizon <= data.long_window)
  c.eval.sampling_steps = (1, 2, 4, 8, 64)  # K values compared (shortcut steps per frame)
  c.eval.context_noise = 0.1  # history corrupted to signal 1 - 0.1 (the paper's "tau_ctx = 0.1")
  c.eval.videos = 4  # rollouts written to TensorBoard (truth | generated)

  if variant == "tiny":
    c.data.window = 4
    c.data.long_window = 6
    c.train.batch_size = 8
    c.train.num_steps = 6
    c.train.long_every = 3
    c.train.long_final_steps = 1
    c.train.log_every = 2
    c.train.eval_every = 0
    c.train.checkpoint_every = 3
    c.optim.warmup_steps = 2
    c.eval.num_batches = 1
    c.eval.sweep_batches = 0
    c.eval.context_frames = 2
    c.eval.horizon = 4
    c.eval.sampling_steps = (1, 4)
    c.eval.videos = 2
  if variant == "paper":
    c.data.window = 64  # T1: short batches [P §4]
    c.data.long_window = 256  # T2: long batches (> context 192)
    c.data.latent_shape = (512, 16)  # the paper tokenizer's latents (for --dry_run without one)
    # Eq 4 step sizes on every row (per frame, as in the paper). A row split (< 1) slices the
    # batch, which at one sequence per device breaks its sharding: --dry_run on 256 devices
    # (depth 4, window 64) measured 283 GiB per device with 0.5 against 11.5 GiB with 1.0.
    c.loss.bootstrap_fraction = 1.0
    c.loss.ramp = True
    c.mesh = common.mesh_config("tpu_fsdp")  # FSDP over every device [P §4]
    c.train.batch_size = 256  # one sequence per device on 256 TPU-v5p [P §4]; set to the device count
    c.train.num_steps = 200_000  # not reported; a placeholder
    c.train.long_every = 10  # the short:long ratio is not reported; our choice
    c.train.long_final_steps = 10_000  # long-only finetune at the end (length not reported)
    c.train.eval_every = 5000
    c.train.checkpoint_every = 1000
    c.train.log_every = 100
    c.optim = common.optim_config(lr=3e-4, warmup_steps=2000)  # not reported; our choice
    c.eval.context_frames = 32
    c.eval.horizon = 64
    c.eval.sampling_steps = (1, 2, 4, 8, 64)
  if variant == "craftax":
    # The toy model and settings with a step budget a 2-core CPU affords (our choice): the
    # dynamics stage of configs/pipeline.py:craftax.
    # 6000 steps as the toy's, about 31 minutes on 2 cores with the evaluation (3.2 steps/s): at 1500
    # (session 12's probe) the model one step ahead got 72.0% of the map blocks right on non-move
    # actions, where copying the frame gets 99.8%, and its latent error there was twice the
    # copy's (0.041 against 0.021): it had not yet learned to carry the view forward. The toy
    # model gained most between 3000 and 6000 steps.
    c.train.num_steps = 6000
    c.train.long_final_steps = 150  # the long-only finetune, as the toy's
    c.eval.num_batches = 1  # one held-out batch: rollouts are the slow part on CPU
    c.eval.sampling_steps = (1, 4)  # K = 1 and the K = 4 the agent phases use
  if variant == "craftax_large":
    # One GPU, latents of tokenizer.py:craftax_large on the default Craftax collection (1M frames,
    # episodes up to 2000 steps). Step times measured on one H100 80 GB (benchmarks/gpu_paper.sh craftax_large,
    # benchmarks/results/h100_craftax_large_step.jsonl), batch 32: 0.151 s per short step (window 32,
    # 7.9 GiB at the allocator's peak) and 0.430 s per long one (window 96, 19.3 GiB); batch 64 fits
    # (0.289 s, 13.6 GiB) at the same frames/s (7,090 against 6,760), so memory does not bound the batch.
    # 28,500 steps with every 10th long (0.179 s on average) and 1,500 long-only: about 96 minutes.
    c.data.window = 32  # T1: short windows, half the context
    c.data.long_window = 96  # T2: long windows (> context 64) [P §3.4]
    c.data.latent_shape = (64, 16)  # tokenizer.py:craftax_large's latents (for --dry_run without one)
    c.loss.bootstrap_fraction = 0.25  # one device holds the whole batch, so a row split keeps its sharding
    c.loss.ramp = True  # Eq 8 ramp weight, as in the paper (the toy's measurement was at toy scale)
    c.mesh = common.mesh_config("single")  # one GPU
    c.mesh.num_devices = 1  # the first device only, so a --dry_run on fake CPU devices sizes one GPU
    c.train.batch_size = 32  # 1024 frames per short step, 3072 per long one
    c.train.num_steps = 30_000  # about 40 passes over 1M frames (26 in short windows), about 96 minutes
    c.train.long_every = 10  # every 10th step long, as the toy and paper variants
    c.train.long_final_steps = 1500  # long-only finetune: the last 5%, the paper variant's share
    c.train.eval_every = 5000  # rollout evaluation 6 times per run (fast on a GPU)
    c.train.summary_every = 5000  # rollout videos with each evaluation
    c.train.checkpoint_every = 1000  # lose at most 1000 steps to an interruption
    c.train.log_every = 100  # scalar metrics
    c.optim = common.optim_config(lr=3e-4, warmup_steps=1000)  # the paper variant's peak lr, shorter warm-up
    c.eval.context_frames = 16  # C_eval: true frames given before generating
    c.eval.horizon = 64  # frames generated (16 + 64 <= long_window 96)
    c.eval.sampling_steps = (1, 2, 4, 8, 64)  # K values compared, as the toy
  return c
