r"""Loader throughput (frames/s per process) against what the train step consumes.

  python -m benchmarks.loader [--store=PATH] [--reads=tokenizer,dynamics[,tokenizer_paper]] \
      [--num_threads=1,2,4] [--workers=0,2] [--blocks=5] [--block_batches=100] [--mfu=0.4] [--out=FILE]

Prints one JSON line per measurement (and appends them to --out when given):

  {"bench": "store", ...}           the store read (fresh or --store)
  {"bench": "loader", ...}          frames/s that `data_pipelines.loader.train_iterator` delivers
                                    (numpy batches on the host) for one read and one setting
  {"bench": "train_step", ...}      the toy train step of that read, timed by benchmarks/train_step.py
  {"bench": "paper_need", ...}      frames/s (and MB/s) a paper-size step consumes on one H100 / v5p
                                    chip, from the analytic FLOPs (benchmarks/flops.py) at --mfu
  {"bench": "loader_summary", ...}  per read: ratio = loader fps / toy step fps (target >= 10 here),
                                    and the paper sizes' need per chip and per host process

Reads (the trainer's, from the configs and the phases' `data_fields`):
  tokenizer        configs/tokenizer.py:toy: frames uint8 64x64, window 2, 8 windows per batch.
  dynamics         configs/dynamics.py:toy: latents float32 [16, 16] + action + label, window 8, 16
                   windows per batch (the short windows; every 10th step reads 20-frame windows, not
                   measured here).
  tokenizer_paper  (opt-in) configs/tokenizer.py:paper's read: 16-frame windows of 384x640 frames, one
                   window per batch (one chip's share), from a temporary synthetic store
                   (`make_paper_frames_store`, about 100 MB); its summary gives `chips_fed`, the
                   chips whose consumption its fps covers. It has no toy step.

Store: by default a fresh toy-world EpisodeStore (64x64 frames, --episodes episodes) collected
into a temporary directory, with random latents of the toy tokenizer's shape [16, 16] written
through the store's API (`add_array` / `write`: the read path is the same as for real latents);
--store=PATH reads an existing store instead (a read whose arrays it lacks is skipped, with a
note; the store is never written to).

Settings: every --num_threads (Grain read threads) x --workers (0: `train_iterator` itself, the
trainer's path; N > 0: the same dataset with grain's `mp_prefetch` over N worker processes,
which `train_iterator` does not offer, so `_worker_iterator` rebuilds its dataset). Prefetch is
the configs' `data.prefetch` (8) unless --prefetch is set. Per setting: --warmup batches are read
untimed (thread/worker start-up, filling the prefetch buffer; `startup_s` is the time to the
first batch), then --blocks blocks of --block_batches batches (--paper_block_batches for
tokenizer_paper) are timed; `fps` is the median of the blocks' frames/s (frames = windows x
window length, counted from the batches' shapes). The loader runs alone: in training it shares
the cores with the step, and 1 / ratio is then roughly its share of them.

Each line carries `loadavg` (os.getloadavg()) and `cpus`: on a shared machine the figures move
with the load.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

READS = ("tokenizer", "dynamics", "tokenizer_paper")
DEFAULT_READS = ("tokenizer", "dynamics")
PAPER_FRAME = (384, 640, 3)  # configs/tokenizer.py:paper
TARGET_RATIO = 10.0  # loader fps / toy step fps on this machine
# Peak dense bf16 FLOP/s per chip (no sparsity): H100 SXM 989 TFLOP/s, TPU v5p 459 TFLOP/s.
CHIPS = {"h100": 989e12, "v5p": 459e12}
# Chips one host process feeds when there is one process per host (8-GPU H100 host, 4-chip v5p host).
CHIPS_PER_HOST = {"h100": 8, "v5p": 4}


def _load() -> dict[str, Any]:
  return dict(loadavg=[round(x, 2) for x in os.getloadavg()], cpus=os.cpu_count())


# ------------------------------------------------------------------------------------------ reads


def read_spec(read: str) -> dict[str, Any]:
  """Window, batch, fields and config of one read, as the trainer reads it for the toy variant."""
  from data_pipelines.windows import LOADER_FIELDS

  if read == "tokenizer":
    from configs import tokenizer
    from dreamer4.phases.tokenizer import TokenizerPhase as phase_cls

    config = tokenizer.get_config("toy")
  elif read == "dynamics":
    from configs import dynamics
    from dreamer4.phases.dynamics import DynamicsPhase as phase_cls

    config = dynamics.get_config("toy")
  elif read == "tokenizer_paper":
    # The paper tokenizer's read (16-frame windows of 384x640 frames), one window per batch: the
    # share of one chip in the paper's 256-chip run (batch 256). Read from a synthetic store.
    from configs import tokenizer
    from dreamer4.phases.tokenizer import TokenizerPhase as phase_cls

    config = tokenizer.get_config("paper")
    config.train.batch_size = 1
  else:
    raise ValueError(f"--reads: unknown read {read!r}; choose from {', '.join(READS)}")
  return dict(
    read=read,
    window=int(config.data.window),
    batch=int(config.train.batch_size),
    fields=tuple(f for f in phase_cls.data_fields if f not in LOADER_FIELDS),
    num_threads=int(config.data.num_threads),
    prefetch=int(config.data.prefetch),
    config=config,
  )


def add_random_latents(path: str, latent_shape: Sequence[int] = (16, 16), seed: int = 0, chunk: int = 4096):
  """Writes random latents in [-1, 1] (the tokenizer's tanh range) for every frame of a store."""
  from data_pipelines.episodes import EpisodeStore

  store = EpisodeStore.open(path, "a")
  attrs = dict(random=True, num_latents=int(latent_shape[0]), latent_dim=int(latent_shape[1]), complete=False)
  store.add_array("latents", tuple(latent_shape), np.float32, attrs)
  rng = np.random.default_rng(seed)
  n = store.num_frames
  for a in range(0, n, chunk):
    m = min(chunk, n - a)
    store.write("latents", a, np.tanh(rng.normal(size=(m,) + tuple(latent_shape))).astype(np.float32))
  store.set_array_attrs("latents", dict(attrs, complete=True, frames=n))


def make_store(
  path: str, episodes: int = 200, size: int = 64, latent_shape: Sequence[int] | None = (16, 16), seed: int = 0
) -> str:
  """A fresh toy-world store (scripted policies, as the tests and train_step.py collect) with random latents.

  latent_shape None: no latents.
  """
  from data_pipelines.collect import collect

  collect("toy", path, episodes=episodes, seed=seed, skills=(0.9, 0.5, 0.0), size=size)
  if latent_shape is not None:
    add_random_latents(path, latent_shape, seed)
  return path


def make_paper_frames_store(path: str, episodes: int = 12, size: int = 64, seed: int = 0) -> str:
  """A store of 384x640 frames: toy episodes upscaled (nearest, 6x by 10x) plus 3 bits of noise.

  Stands in for the paper's Minecraft frames in the read cost: the same bytes per frame, and a
  zstd ratio (2.3x, in the store line) in the range of natural images, where plain upscaled toy
  frames would compress far better and read faster. Real Minecraft frames were not measured.
  """
  from data_pipelines.episodes import EpisodeStore

  tmp = path.rstrip("/") + "-toy"
  collect_store = make_store(tmp, episodes=episodes, size=size, seed=seed, latent_shape=None)
  src = EpisodeStore.open(collect_store)
  H, W, _ = PAPER_FRAME
  store = EpisodeStore.create(
    path,
    env="synthetic-paper-frames",
    frame_shape=PAPER_FRAME,
    action_spec=src.action_spec,
    task_names=src.task_names,
    fps=20,
    created_by="benchmarks.loader",
  )
  rng = np.random.default_rng(seed)
  for e in range(src.num_episodes):
    ep = src.read_episode(e)
    frames = np.repeat(np.repeat(ep["frames"], -(-H // size), axis=1), -(-W // size), axis=2)[:, :H, :W]
    frames = frames.astype(np.uint8) | rng.integers(0, 8, frames.shape, dtype=np.uint8)
    store.append(frames, ep["actions_discrete"], ep["rewards"], ep["tasks"], ep["action_labelled"])
  shutil.rmtree(tmp, ignore_errors=True)
  return path


def _disk_bytes(path: str) -> int:
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


# ------------------------------------------------------------------------------------------ loader


def _worker_iterator(
  path: str,
  *,
  window: int,
  batch_size: int,
  seed: int,
  episode_ids,
  num_threads: int,
  prefetch: int,
  fields,
  workers: int,
):
  """`loader.train_iterator`'s dataset (same source, epoch shuffle, batching) with `mp_prefetch`.

  `train_iterator` has no worker option, so this rebuilds its pipeline (one process, shard 0
  of 1) and adds Grain's multiprocessing prefetch over `workers` processes, each with
  `num_threads` read threads. The batch contents and order differ from `train_iterator`'s (each
  worker reads its own slice of the batches), the work per batch is the same.
  """
  import grain

  from data_pipelines import loader
  from data_pipelines.windows import WindowSource

  loader._check_batch_size(batch_size)  # pylint: disable=protected-access
  source = WindowSource(path, window, episode_ids, fields, "end")
  per_process = len(source) // batch_size * batch_size
  if per_process == 0:
    raise ValueError(f"{path}: {len(source)} windows, fewer than one batch of {batch_size}")
  ds = loader._EpochShuffleShard(
    grain.MapDataset.source(source),
    seed=seed,  # pylint: disable=protected-access
    per_process_epoch=per_process,
    process_index=0,
    process_count=1,
    block=batch_size,
  )
  ds = ds.batch(batch_size, drop_remainder=True)
  ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch))
  ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
  return iter(ds)


def measure_loader(
  path: str,
  read: str,
  *,
  num_threads: int = 4,
  workers: int = 0,
  prefetch: int | None = None,
  warmup: int = 20,
  blocks: int = 5,
  block_batches: int = 100,
  window: int | None = None,
  batch_size: int | None = None,
  fields: Sequence[str] | None = None,
  seed: int = 0,
) -> dict[str, Any]:
  """Frames/s that the loader delivers for one read and one setting (see the module docstring).

  Args:
    path: EpisodeStore location.
    read: "tokenizer" or "dynamics" (window, batch and fields default to the toy config's).
    num_threads, workers, prefetch: the setting (prefetch None: the config's).
    warmup: untimed batches (at least 1: the first batch gives `startup_s`).
    blocks, block_batches: the timed blocks; `fps` is the median of their frames/s.
    window, batch_size, fields: override the read's (e.g. a tiny store in tests).
    seed: data seed.

  Returns:
    A JSON-ready dict: the setting, `batches` and `frames` timed (frames counted from the batch
    shapes), `bytes_per_frame` (the fields read), `block_fps`, `fps` (median), `mb_per_s`,
    `startup_s`, the load.
  """
  from data_pipelines import loader
  from data_pipelines.episodes import EpisodeStore

  if warmup < 1 or blocks < 1 or block_batches < 1:
    raise ValueError(f"need warmup, blocks and block_batches >= 1, got {warmup}, {blocks}, {block_batches}")
  spec = read_spec(read)
  T = int(window or spec["window"])
  B = int(batch_size or spec["batch"])
  fields = tuple(fields or spec["fields"])
  prefetch = int(spec["prefetch"] if prefetch is None else prefetch)
  store = EpisodeStore.open(path)
  train_ids, _ = store.split(float(spec["config"].data.eval_fraction))
  kwargs = dict(
    window=T, batch_size=B, seed=seed, episode_ids=train_ids, num_threads=num_threads, prefetch=prefetch, fields=fields
  )
  load_before = _load()
  t0 = time.perf_counter()
  if workers:
    it = _worker_iterator(path, workers=workers, **kwargs)
  else:
    it = loader.train_iterator(path, pad="end", **kwargs)
  try:
    batch = next(it)
    startup_s = time.perf_counter() - t0
    for _ in range(warmup - 1):
      batch = next(it)
    bytes_per_frame = sum(int(batch[f].nbytes) for f in fields) / (B * T)
    block_fps, block_s, frames = [], [], 0
    for _ in range(blocks):
      n = 0
      t0 = time.perf_counter()
      for _ in range(block_batches):
        batch = next(it)
        lead = batch[fields[0]].shape[:2]
        n += int(lead[0]) * int(lead[1])
      dt = time.perf_counter() - t0
      block_fps.append(n / dt)
      block_s.append(dt)
      frames += n
  finally:
    close = getattr(it, "close", None)
    if close is not None:
      close()
    del it
  fps = statistics.median(block_fps)
  return dict(
    bench="loader",
    read=read,
    store=os.path.basename(os.path.normpath(path)),
    window=T,
    batch=B,
    fields=list(fields),
    num_threads=int(num_threads),
    workers=int(workers),
    prefetch=prefetch,
    warmup=warmup,
    blocks=blocks,
    block_batches=block_batches,
    batches=blocks * block_batches,
    frames=frames,
    frames_per_batch=B * T,
    bytes_per_frame=bytes_per_frame,
    startup_s=startup_s,
    block_s=block_s,
    block_fps=block_fps,
    fps=fps,
    fps_min=min(block_fps),
    fps_max=max(block_fps),
    mb_per_s=fps * bytes_per_frame / 1e6,
    load_before=load_before,
    **_load(),
  )


# ------------------------------------------------------------------------------------------ step


def measure_step(read: str, path: str, *, steps: int = 3, warmup: int = 1) -> dict[str, Any]:
  """The toy train step of a read (benchmarks/train_step.py's machinery), frames/s = batch * window / step_s.

  tokenizer: `run_train_step` of configs/tokenizer.py:toy on the store's frames (LPIPS on, as
  the toy trains). dynamics: `run_dynamics_step` of configs/dynamics.py:toy on synthetic latents of
  the store's latent shape ([16, 16] when it has none).
  """
  from benchmarks import train_step as ts
  from data_pipelines.episodes import EpisodeStore

  if read == "tokenizer":
    config = ts.size_config("small")
    config.data.path = path
    rec = ts.run_train_step(config, path, steps=steps, warmup=warmup, size="toy")
  elif read == "dynamics":
    store = EpisodeStore.open(path)
    shape = (16, 16)
    if "latents" in store.array_names:
      shape = tuple(int(s) for s in store.metadata["extra_arrays"]["latents"]["trailing_shape"])
    rec = ts.run_dynamics_step(
      ts.dynamics_size_config("toy"), latent_shape=shape, steps=steps, warmup=warmup, size="toy"
    )
  else:
    raise ValueError(f"unknown read {read!r}")
  return dict(rec, read=read, **_load())


# ------------------------------------------------------------------------------------------ paper


def paper_need(mfu: float = 0.4, chips: dict[str, float] | None = None) -> list[dict[str, Any]]:
  """Frames/s one chip's paper-size train step consumes: peak * mfu / analytic FLOPs per frame.

  tokenizer: configs/tokenizer.py:paper (384x640 frames, 16-frame windows, LPIPS on every frame),
  one window per chip as in the paper's 256-chip run. dynamics: configs/dynamics.py:paper (512 x 16
  latents, 64-frame short windows, bootstrap targets on every row), one window per chip. FLOPs per
  frame do not depend on the batch. Bytes per frame are those the loader reads: uint8 frames, and
  float32 latents (as the encode job writes them) plus one int32 action and one bool label.
  """
  from benchmarks import flops as fl
  from configs import dynamics, tokenizer

  chips = dict(chips or CHIPS)
  out = []
  tc = tokenizer.get_config("paper")
  H, W, C = tc.data.frame_shape
  T = int(tc.data.window)
  tok = fl.tokenizer_train_flops(tc.model, (H, W, C), 1, T, lpips_frames=int(tc.loss.lpips_frames), lpips=True)
  dc = dynamics.get_config("paper")
  N, L = dc.data.latent_shape
  Td = int(dc.data.window)
  dyn = fl.dynamics_train_flops(dc.model, N, L, 1, Td, float(dc.loss.bootstrap_fraction))
  reads = {
    "tokenizer": (tok["total"] / T, H * W * C, dict(frame_shape=[H, W, C], window=T)),
    "dynamics": (dyn["total"] / Td, N * L * 4 + 4 + 1, dict(latent_shape=[N, L], window=Td)),
  }
  for read, (flops_per_frame, bytes_per_frame, info) in reads.items():
    for chip, peak in chips.items():
      fps = peak * mfu / flops_per_frame
      per_host = CHIPS_PER_HOST.get(chip, 1)
      out.append(
        dict(
          bench="paper_need",
          read=read,
          chip=chip,
          peak_tflops=peak / 1e12,
          mfu=mfu,
          flops_per_frame=flops_per_frame,
          bytes_per_frame=bytes_per_frame,
          fps_per_chip=fps,
          mb_per_s_per_chip=fps * bytes_per_frame / 1e6,
          chips_per_host=per_host,
          fps_per_host_process=fps * per_host,
          mb_per_s_per_host_process=fps * per_host * bytes_per_frame / 1e6,
          **info,
        )
      )
  return out


# ------------------------------------------------------------------------------------------ summary


def summarize(
  loader_recs: Sequence[dict], step_recs: dict[str, dict], paper_recs: Sequence[dict] = (), target: float = TARGET_RATIO
) -> dict[str, Any]:
  """One summary per read: ratio = loader fps / toy step fps, at the trainer's setting.

  The paper-size read (`tokenizer_paper`) has no toy step; its summary says how many chips of each
  kind its loader fps would feed (`chips_fed` = loader fps / the chip's need).

  The trainer's setting is the config's `data.num_threads` without workers; when that was not
  measured, the best measured setting stands in (`loader_setting` says which). `ratio_min` uses the
  slowest measured setting. The paper lines are copied per read and chip.
  """
  reads = {}
  for rec in loader_recs:
    reads.setdefault(rec["read"], []).append(rec)
  out = dict(bench="loader_summary", target_ratio=target, reads={}, **_load())
  for read, recs in reads.items():
    default_threads = read_spec(read)["num_threads"]
    default = [r for r in recs if r["num_threads"] == default_threads and r["workers"] == 0]
    best = max(recs, key=lambda r: r["fps"])
    chosen = default[0] if default else best
    entry = dict(
      loader_fps=chosen["fps"],
      loader_mb_per_s=chosen["mb_per_s"],
      loader_setting=dict(num_threads=chosen["num_threads"], workers=chosen["workers"]),
      loader_fps_best=best["fps"],
      best_setting=dict(num_threads=best["num_threads"], workers=best["workers"]),
      loader_fps_min=min(r["fps"] for r in recs),
    )
    step = step_recs.get(read)
    if step:
      entry["step_fps"] = step["frames_per_s"]
      entry["ratio"] = entry["loader_fps"] / step["frames_per_s"]
      entry["ratio_min"] = entry["loader_fps_min"] / step["frames_per_s"]
      entry["target_met"] = entry["ratio"] >= target
    for p in paper_recs:
      if p["read"] == read.removesuffix("_paper"):
        entry[f"paper_{p['chip']}"] = {
          k: p[k]
          for k in (
            "fps_per_chip",
            "mb_per_s_per_chip",
            "chips_per_host",
            "fps_per_host_process",
            "mb_per_s_per_host_process",
          )
        }
        if read.endswith("_paper"):  # paper-size frames: how many chips this process's loader keeps fed
          entry[f"paper_{p['chip']}"]["chips_fed"] = entry["loader_fps"] / p["fps_per_chip"]
    out["reads"][read] = entry
  return out


# ------------------------------------------------------------------------------------------ main


def _emit(record: dict, out_path: str):
  line = json.dumps(record)
  print(line, flush=True)
  if out_path:
    with open(out_path, "a", encoding="utf-8") as f:
      f.write(line + "\n")


def run(
  path: str,
  reads: Sequence[str],
  threads: Sequence[int],
  workers: Sequence[int],
  *,
  prefetch: int | None,
  warmup: int,
  blocks: int,
  block_batches: int,
  step_steps: int,
  mfu: float,
  emit: Callable[[dict], None],
  paper_store: str = "",
  paper_block_batches: int = 10,
) -> dict[str, Any]:
  """Measures every read and setting, the toy steps and the paper need; emits every line; returns the summary.

  `path` serves the toy reads, `paper_store` (make_paper_frames_store) the `tokenizer_paper` read,
  with `paper_block_batches` batches per timed block.
  """
  from data_pipelines.episodes import EpisodeStore

  loader_recs, steps = [], {}
  for read in reads:
    paper = read.endswith("_paper")
    read_path = paper_store if paper else path
    if not read_path:
      emit(dict(bench="loader", read=read, skipped="no store of paper-size frames given"))
      continue
    store = EpisodeStore.open(read_path)
    missing = [f for f in read_spec(read)["fields"] if f not in store.array_names]
    if missing:
      emit(dict(bench="loader", read=read, skipped=f"store {read_path} has no {', '.join(missing)}"))
      continue
    for w in workers:
      for t in threads:
        rec = measure_loader(
          read_path,
          read,
          num_threads=t,
          workers=w,
          prefetch=prefetch,
          warmup=warmup,
          blocks=blocks,
          block_batches=paper_block_batches if paper else block_batches,
        )
        loader_recs.append(rec)
        emit(rec)
  for read in sorted({r["read"] for r in loader_recs}, key=list(reads).index):
    if step_steps > 0 and not read.endswith("_paper"):
      steps[read] = measure_step(read, path, steps=step_steps)
      emit(steps[read])
  paper = paper_need(mfu)
  for p in paper:
    emit(p)
  summary = summarize(loader_recs, steps, paper)
  emit(summary)
  return summary


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  ints = lambda s: [int(x) for x in s.split(",") if x]
  p = argparse.ArgumentParser(prog="python -m benchmarks.loader", description=__doc__.split("\n\n")[0])
  p.add_argument(
    "--store",
    default="",
    help="An existing EpisodeStore (e.g. runs/toy/data); default: collect "
    "a fresh toy store into a temporary directory.",
  )
  p.add_argument("--episodes", type=int, default=200, help="Episodes of the fresh toy store (64x64 frames).")
  p.add_argument(
    "--reads",
    default=",".join(DEFAULT_READS),
    help=f"Reads to measure: {', '.join(READS)} (tokenizer_paper writes a temporary store of "
    "384x640 frames, about 100 MB on disk).",
  )
  p.add_argument(
    "--paper_block_batches",
    type=int,
    default=10,
    help="Batches per timed block of tokenizer_paper (one 16-frame window each).",
  )
  p.add_argument("--num_threads", type=ints, default=[1, 2, 4], help="Grain read threads, one setting each.")
  p.add_argument(
    "--workers",
    type=ints,
    default=[0, 2],
    help="Grain worker processes, one setting each (0: none, the trainer's path).",
  )
  p.add_argument("--prefetch", type=int, default=0, help="Grain prefetch buffer (batches); 0: the config's.")
  p.add_argument("--warmup", type=int, default=20, help="Untimed batches per setting.")
  p.add_argument("--blocks", type=int, default=5, help="Timed blocks per setting (the median counts).")
  p.add_argument("--block_batches", type=int, default=100, help="Batches per timed block.")
  p.add_argument("--step_steps", type=int, default=3, help="Timed toy train steps per read (0: skip the step).")
  p.add_argument("--mfu", type=float, default=0.4, help="Assumed model-FLOPs utilisation of the paper-size steps.")
  p.add_argument("--out", default="", help="Append the JSON lines to this file as well.")
  args = p.parse_args(argv)
  args.reads = [r for r in args.reads.split(",") if r]
  for r in args.reads:
    if r not in READS:
      p.error(f"--reads: unknown read {r!r}; choose from {', '.join(READS)}")
  if not args.num_threads or min(args.num_threads) < 1 or not args.workers or min(args.workers) < 0:
    p.error("--num_threads must be >= 1 and --workers >= 0")
  return args


def main(argv: Sequence[str] | None = None):
  args = parse_args(sys.argv[1:] if argv is None else argv)
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  from absl import flags

  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()  # grain reads its absl flags; keep their defaults
  emit = lambda rec: _emit(rec, args.out)
  tmp = None
  try:
    path = args.store
    if not path and any(not r.endswith("_paper") for r in args.reads):
      tmp = tempfile.mkdtemp(prefix="bench-loader-")
      path = os.path.join(tmp, "toy64")
      t0 = time.perf_counter()
      make_store(path, episodes=args.episodes)
      from data_pipelines.episodes import EpisodeStore

      s = EpisodeStore.open(path)
      emit(
        dict(
          bench="store",
          path="fresh toy store (temporary)",
          episodes=s.num_episodes,
          frames=s.num_frames,
          frame_shape=list(s.frame_shape),
          arrays=list(s.array_names),
          latents="random",
          seconds=time.perf_counter() - t0,
          **_load(),
        )
      )
    elif path:
      from data_pipelines.episodes import EpisodeStore

      s = EpisodeStore.open(path)
      emit(
        dict(
          bench="store",
          path=path,
          episodes=s.num_episodes,
          frames=s.num_frames,
          frame_shape=list(s.frame_shape),
          arrays=list(s.array_names),
          **_load(),
        )
      )
    paper_store = ""
    if any(r.endswith("_paper") for r in args.reads):
      tmp = tmp or tempfile.mkdtemp(prefix="bench-loader-")
      paper_store = os.path.join(tmp, "paper_frames")
      t0 = time.perf_counter()
      make_paper_frames_store(paper_store)
      from data_pipelines.episodes import EpisodeStore

      s = EpisodeStore.open(paper_store)
      raw = s.num_frames * int(np.prod(s.frame_shape))
      emit(
        dict(
          bench="store",
          path="synthetic paper-size frames (temporary)",
          episodes=s.num_episodes,
          frames=s.num_frames,
          frame_shape=list(s.frame_shape),
          frames_compression=raw / _disk_bytes(os.path.join(paper_store, "frames")),
          seconds=time.perf_counter() - t0,
          **_load(),
        )
      )
    run(
      path,
      args.reads,
      args.num_threads,
      args.workers,
      prefetch=args.prefetch or None,
      warmup=args.warmup,
      blocks=args.blocks,
      block_batches=args.block_batches,
      step_steps=args.step_steps,
      mfu=args.mfu,
      emit=emit,
      paper_store=paper_store,
      paper_block_batches=args.paper_block_batches,
    )
  finally:
    if tmp:
      shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
  main()
