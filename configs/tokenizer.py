r"""Phase 1a: train the causal tokenizer.

Run (after `python -m data_pipelines.collect --env=toy --episodes=400 --output=runs/toy/data`):

  python -m dreamer4.main --config=configs/tokenizer.py:toy --workdir=runs/toy/tokenizer \
      --config.data.path=runs/toy/data

Variants (the argument after the colon):
  toy   the laptop default: 64x64 toy-world frames, a small model, about 15 minutes on 2 CPU cores.
  tiny  seconds-long runs for tests (16x16 frames, 2+2 layers).
  paper the paper's Minecraft tokenizer (about 400M parameters, 384x640 frames, 16x16 patches,
        512 latents x 16 channels, 16-frame windows), bf16 compute, remat, FSDP over every
        device with one window per device. Check what fits first:
          python -m dreamer4.main --dry_run --config=configs/tokenizer.py:paper --cpu_devices=8 \
              --config.train.batch_size=8
  craftax  Craftax-Classic at a 2-core CPU budget: the toy model on 63x63 frames with 7-px patches
        (one per game cell) and 27 latents, 3000 steps (the tokenizer stage of configs/pipeline.py:craftax).
  craftax_large  Craftax-Classic on one GPU (an 80 GB H100): 64x64 frames, 8x8 patches, 64 latents x 16,
        width 512, 8+8 layers, bf16, remat, on the default 1M-frame collection
        (`python -m data_pipelines.collect --env=craftax --output=DATA`). Check what fits first:
          python -m dreamer4.main --dry_run --config=configs/tokenizer.py:craftax_large --cpu_devices=8 \
              --config.train.batch_size=8
"""

from __future__ import annotations

import ml_collections

from configs import common

VARIANTS = ("toy", "tiny", "paper", "craftax", "craftax_large")


def data_config(path: str = "", window: int = 2) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.path = path  # EpisodeStore directory or TensorStore kvstore URL
  c.window = window  # frames per window; one starts at every frame, padded past the episode end (valid_T)
  c.eval_fraction = 0.1  # share of episodes held out for evaluation (split by episode)
  c.split_seed = 0  # seed of the train/eval episode split
  c.seed = 0  # data order seed (shuffle per epoch)
  c.num_threads = 4  # Grain read threads per process
  c.prefetch = 8  # Grain prefetch buffer (batches of windows)
  # (H, W, C) of the frames, used only by --dry_run when no data.path is given; a real run
  # takes the frame shape from the store.
  c.frame_shape = ml_collections.FieldReference(None, field_type=tuple)
  return c


def model_config(variant: str) -> ml_collections.ConfigDict:
  """Tokenizer size. Widths/depths are our choice: the paper gives only the 400M total."""
  c = ml_collections.ConfigDict()
  c.patch_size = 8  # pixels per patch side (paper: 16 at 384x640)
  c.num_latents = 16  # N_b learned latent tokens per frame (paper: 512)
  c.latent_dim = 16  # D_b bottleneck channels, tanh (paper: 16)
  c.width = 128  # model width
  c.enc_depth = 4  # encoder layers
  c.dec_depth = 4  # decoder layers
  c.num_heads = 4  # attention heads
  c.num_kv_heads = 4  # key/value heads (GQA when fewer than num_heads)
  c.head_dim = 32  # per-head width
  c.mlp_dim = 512  # SwiGLU hidden width
  c.time_every = 4  # a causal time layer every N layers (the N-th of each group)
  c.softcap = 50.0  # attention-logit soft cap c*tanh(x/c) (Gemma 2's value; paper: unstated)
  c.dtype = "float32"  # compute dtype; parameters are always float32 (XLA:CPU bf16 is not faster)
  c.remat = False  # rematerialise each block in the backward pass
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
  # Our choices that make the toy tokenizer learn (README "Tokenizer notes"); without the
  # first three it stalls at the background-only 18.9 dB. See dreamer4/models/tokenizer.py.
  c.block_skip = True  # linear path latent j <-> its block of P/N patches (needs P % N == 0)
  c.output = "clip"  # pixel readout: "clip" (linear, straight-through clip) or "sigmoid"
  c.readout_bias_init = 0.13  # readout bias at init: the toy world's mean pixel value
  c.readout_init_scale = 0.1  # readout kernel init scale: start near the mean image
  c.context = 2  # time layers read at most this many frames (= data.window: encoding
  # whole episodes later keeps each frame's context as in training)
  if variant == "tiny":
    c.patch_size = 4
    c.num_latents = 4
    c.latent_dim = 8
    c.width = 32
    c.enc_depth = 2
    c.dec_depth = 2
    c.num_heads = 2
    c.num_kv_heads = 1
    c.head_dim = 16
    c.mlp_dim = 64
    c.time_every = 2
    c.readout_bias_init = 0.5
  if variant == "paper":
    # Widths/depths are ours (paper: "400M" [P §4]); they follow a third-party reimplementation
    # (IamCreateAI/Dreamerv4-MC: width 1024, 16+16 layers, 8 heads) with a SwiGLU hidden width of
    # about 8/3 of its 4096 GELU FFN, which gives 403M parameters.
    c.patch_size = 16  # 384x640 -> 24x40 = 960 patches [P App. A]
    c.num_latents = 512  # N_b [P App. A]
    c.latent_dim = 16  # D_b
    c.width = 1024
    c.enc_depth = 16
    c.dec_depth = 16
    c.num_heads = 8
    c.num_kv_heads = 8  # the paper scopes GQA to the dynamics model
    c.head_dim = 128
    c.mlp_dim = 2688
    c.time_every = 4  # one causal time layer in four [P §3.4]
    # Mixed precision: parameters, gradients and Adam state stay float32; matmuls and the
    # residual stream run in bfloat16; RMSNorm, RoPE, attention logits/softmax, the
    # tanh bottleneck, the pixel readout and the losses are computed in float32.
    c.dtype = "bfloat16"
    c.remat = True  # recompute each block in the backward pass (activation memory)
    c.scan_layers = True  # one scanned layer group: memory and program flat in depth
    c.context = 16  # = data.window
    c.block_skip = False  # 960 patches / 512 latents: no whole blocks; the paper has no skip
    c.output = "sigmoid"
    c.readout_bias_init = 0.0
    c.readout_init_scale = 1.0
  if variant == "craftax":
    # Craftax frames at their own 63x63 (configs/pipeline.py:craftax): 7-px patches are the game's
    # cells, 9x9 = 81 patches, one block each. 27 latents, 3 patches (a third of a row) each, so
    # block_skip links each latent to whole cells; dynamics.py:craftax groups 3 per token, one
    # row of the view per token. The reason (get_config's craftax block): the map read back.
    c.patch_size = 7
    c.num_latents = 27
  if variant == "craftax_large":
    # Our sizes for one GPU (the paper has no Craftax tokenizer): 4x the toy's width, 2x its depth.
    c.patch_size = 8  # 64x64 frames -> 8x8 = 64 patches
    c.num_latents = 64  # N_b: one latent token per patch
    c.latent_dim = 16  # D_b, as in the paper [P App. A]
    c.width = 512  # 4x the toy width
    c.enc_depth = 8  # encoder layers
    c.dec_depth = 8  # decoder layers
    c.num_heads = 8  # attention heads (head_dim x num_heads = width)
    c.num_kv_heads = 8  # no GQA: the paper scopes GQA to the dynamics model
    c.head_dim = 64  # per-head width
    c.mlp_dim = 2048  # SwiGLU hidden width: 4 x width
    c.time_every = 4  # one causal time layer in four [P §3.4]
    c.dtype = "bfloat16"  # bf16 matmuls and residual stream (norms, softmax, losses in float32)
    c.remat = True  # recompute each block in the backward pass (activation memory)
    c.scan_layers = True  # one scanned layer group: memory and program flat in depth
    c.context = 8  # = data.window (encoding keeps each frame's training context)
    # block_skip, output and the readout init stay the toy's: the craftax variant trained with them
    # (22.2 dB held-out PSNR); 0.13 is the toy world's mean pixel, not measured on Craftax.
  return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = arg or "toy"
  if variant not in VARIANTS:
    raise ValueError(f"configs/tokenizer.py: unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")
  c = ml_collections.ConfigDict()
  c.phase = "tokenizer"  # which phase dreamer4.main runs
  c.variant = variant  # the variant this config was built from (for the record)
  c.data = data_config(window=2)
  c.model = model_config(variant)

  c.loss = ml_collections.ConfigDict()
  c.loss.lpips_weight = 0.2  # MSE + 0.2 LPIPS, each RMS-normalised [P Eq 5]
  c.loss.lpips_frames = 4  # LPIPS on this many random frames per step (our CPU-cost choice; <=0: all)
  c.loss.max_mask_prob = 0.9  # MAE: per-image drop probability p ~ U(0, max_mask_prob)
  c.loss.rms_decay = 0.99  # EMA decay of the RMS loss normaliser (non-paper choice)

  c.optim = common.optim_config(lr=1e-3, warmup_steps=100)
  c.mesh = common.mesh_config("data")

  c.train = common.train_config(batch_size=8, num_steps=1000, eval_every=500, summary_every=500)

  c.eval = ml_collections.ConfigDict()
  c.eval.num_batches = 4  # held-out batches per evaluation

  if variant == "tiny":
    c.data.window = 2
    c.loss.lpips_frames = 2
    c.train.batch_size = 8
    c.train.num_steps = 6
    c.train.log_every = 2
    c.train.eval_every = 0
    c.train.summary_every = 0
    c.train.checkpoint_every = 3
    c.optim.warmup_steps = 2
    c.eval.num_batches = 1
  if variant == "paper":
    c.data.window = 16  # 16-frame windows (as IamCreateAI/Dreamerv4-MC; the paper gives none)
    c.data.frame_shape = (384, 640, 3)  # Minecraft frames zero-padded to 384x640 [P App. A]
    c.loss.lpips_frames = 0  # LPIPS on every frame: a random subset would gather frames across devices
    c.mesh = common.mesh_config("tpu_fsdp")  # FSDP over every device [P §4]
    c.train.batch_size = 256  # one window per device on 256 TPU-v5p [P §4]; set to the device count
    c.train.num_steps = 200_000  # not reported; a placeholder
    c.train.eval_every = 5000
    c.train.summary_every = 5000
    c.train.checkpoint_every = 1000
    c.train.log_every = 100
    c.optim = common.optim_config(lr=3e-4, warmup_steps=2000)  # not reported; our choice
  if variant == "craftax":
    # The toy model on the game's cells (model_config) and a step budget a 2-core CPU affords
    # (our choice): the tokenizer stage of configs/pipeline.py:craftax. Chosen by what a world
    # model needs from it, the map read back from the decoded frame (eval/craftax_block_acc_recon:
    # the share of the 63 map cells the Craftax parser reads as the true block), not by PSNR.
    # Held-out, at 64 px with 8-px patches: toy settings 70.6% at 500 steps and 75.8% at 1000 (the
    # 800-step run of session 12 read 74.1% against 92.8% for copying the previous real frame, so
    # the tokenizer capped every rollout); masking at most half the patches, 74.0% at 500; 32
    # latents, 75.8% at 500 and 84.5% at 3000, still below a held real frame (88%). At 63 px with
    # 7-px patches and 27 latents, on the 600-episode data: 93.3% at 500 steps, against 82.9% for
    # 64 px and 32 latents on the same data, at the same step time (docs/RESULTS.md, session 18).
    c.train.num_steps = 3000  # about 30 minutes on 2 cores (0.59 s/step with the evaluations)
    c.train.eval_every = 500  # the block accuracy curve, 6 points
    c.train.checkpoint_every = 500
  if variant == "craftax_large":
    # One GPU, data from the default Craftax collection (1M frames, episodes up to 2000 steps).
    # Step time measured on one H100 80 GB (benchmarks/gpu_paper.sh craftax_large, results in
    # benchmarks/results/h100_craftax_large_step.jsonl): 0.094 s at batch 32 x window 8 (2,730
    # frames/s, 5.2 GiB at the allocator's peak), so the 50,000 steps take about 78 minutes.
    c.data.window = 8  # 8-frame windows: time layers see more context than the toy's 2
    c.data.frame_shape = (64, 64, 3)  # Craftax frames as collected (for --dry_run without a store)
    c.loss.lpips_frames = 0  # LPIPS on every frame: VGG16 at 64x64 costs little next to the model on a GPU
    c.mesh = common.mesh_config("single")  # one GPU
    c.mesh.num_devices = 1  # the first device only, so a --dry_run on fake CPU devices sizes one GPU
    c.train.batch_size = 32  # 256 frames per step (5.2 GiB: memory does not bound it)
    c.train.num_steps = 50_000  # about 13 passes over 1M frames, about 78 minutes on one H100
    c.train.eval_every = 2500  # held-out PSNR 20 times per run
    c.train.summary_every = 2500  # reconstructions with each evaluation
    c.train.checkpoint_every = 1000  # lose at most 1000 steps to an interruption
    c.train.log_every = 100  # scalar metrics
    c.optim = common.optim_config(lr=3e-4, warmup_steps=1000)  # the paper variant's peak lr, shorter warm-up
  return c
