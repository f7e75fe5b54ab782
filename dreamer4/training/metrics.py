"""CLU metric writers (TensorBoard), averaged step metrics, and image grids.

`clu.metric_writers` imports TensorFlow (about 20 s on 2 cores, per process), so it is imported
lazily, only by process 0 when it creates its TensorBoard writer; the other processes of a
multi-process run log through `LogWriter`, which needs no TensorFlow, and wait for process 0
at the end of `create_writer`.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import numpy as np
from absl import logging
from clu import metrics as clu_metrics

_WRITER_BARRIER_TIMEOUT_S = 900  # the TensorFlow import: ~20 s on 2 idle cores, minutes when loaded
_writers_created = 0


def create_writer(workdir: str):
  """TensorBoard + logging writer on process 0, logging only elsewhere.

  Every process calls it: in a multi-process run it ends at a barrier. Only process 0 imports
  TensorFlow here, so without one the others would reach the first collective of the next step
  that much earlier, and a CPU (gloo) collective gives up on a peer that late ("Gloo context
  initialization failed: ... Connect timeout", seen with 2 processes on a loaded 2-core
  machine). The barrier is the coordination service's, with a generous timeout of its own.
  """
  global _writers_created
  if jax.process_index() > 0:
    writer = LogWriter()
  else:
    from clu import metric_writers  # lazy: imports TensorFlow

    writer = metric_writers.create_default_writer(workdir, asynchronous=True)
  _writers_created += 1
  if jax.process_count() > 1:
    from orbax.checkpoint import multihost

    multihost.get_barrier_sync_fn()(
      key=f"dreamer4_writer_{_writers_created}", timeout_ms=_WRITER_BARRIER_TIMEOUT_S * 1000
    )
  return writer


class LogWriter:
  """The writer of processes other than 0: values to the INFO log, in clu's LoggingWriter format.

  clu's own LoggingWriter cannot be imported without `clu.metric_writers`, whose package
  imports TensorFlow; this one has the methods the trainer and the evaluations call.
  """

  def write_scalars(self, step: int, scalars: Mapping[str, float]):
    values = [f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(scalars.items())]
    logging.info("[%d] %s", step, ", ".join(values))

  def write_images(self, step: int, images: Mapping[str, np.ndarray]):
    logging.info("[%d] Got images: %s.", step, {k: np.shape(v) for k, v in images.items()})

  def write_videos(self, step: int, videos: Mapping[str, np.ndarray]):
    logging.info("[%d] Got videos: %s.", step, {k: np.shape(v) for k, v in videos.items()})

  def write_texts(self, step: int, texts: Mapping[str, str]):
    logging.info("[%d] Got texts: %s.", step, texts)

  def write_hparams(self, hparams: Mapping[str, object]):
    logging.info("[Hyperparameters] %s", hparams)

  def flush(self):
    logging.flush()

  def close(self):
    self.flush()


class MeanMetrics:
  """Averages a stream of scalar metric dicts between writes, with clu.metrics.Average."""

  def __init__(self):
    self._acc: dict[str, clu_metrics.Average] = {}

  def update(
    self, values: Mapping[str, np.ndarray], skip_nan: bool = False, weights: Mapping[str, np.ndarray] | None = None
  ):
    """Adds one dict of values. skip_nan: a NaN value is left out (evaluation: a masked mean
    over no valid frame, e.g. a horizon step that every window of one batch has padded).
    weights: name -> the weight of this value (e.g. the number of valid frames its mean is
    over), so that the mean over updates pools their frames instead of averaging per-update
    means; a name without a weight weighs 1, a zero weight leaves the value out."""
    weights = weights or {}
    for k, v in values.items():
      v = np.asarray(v, np.float32)
      if skip_nan and np.isnan(v).all():
        continue
      if k in weights:
        w = float(np.asarray(weights[k]))
        if w <= 0:
          continue
        m = clu_metrics.Average(total=np.float32(v.mean() * w), count=np.float32(w))
      else:
        m = clu_metrics.Average.from_model_output(v)
      self._acc[k] = m if k not in self._acc else self._acc[k].merge(m)

  def compute_and_reset(self) -> dict[str, float]:
    out = {k: float(m.compute()) for k, m in self._acc.items()}
    self._acc = {}
    return out


def image_grid(images_NHWC: np.ndarray, cols: int) -> np.ndarray:
  """Tiles N images into one [rows*H, cols*W, C] uint8 grid (1-px gaps)."""
  images = np.asarray(images_NHWC)
  if images.dtype != np.uint8:
    images = (np.clip(images, 0.0, 1.0) * 255).round().astype(np.uint8)
  n, h, w, c = images.shape
  rows = -(-n // cols)
  grid = np.full((rows * (h + 1) - 1, cols * (w + 1) - 1, c), 255, np.uint8)
  for i in range(n):
    r, q = divmod(i, cols)
    grid[r * (h + 1) : r * (h + 1) + h, q * (w + 1) : q * (w + 1) + w] = images[i]
  return grid


def psnr(a, b, max_val: float = 1.0):
  """PSNR in dB per leading item, images in [0, max_val] (works on numpy or jax arrays)."""
  xp = np if isinstance(a, np.ndarray) else jax.numpy
  mse = ((a - b) ** 2).reshape(a.shape[0], -1).mean(axis=1)
  return 10.0 * xp.log10(max_val**2 / xp.maximum(mse, 1e-10))


def write_gif(path: str, videos_RTHWC: np.ndarray, fps: int = 8) -> None:
  """Writes R videos side by side (one row each) as an animated GIF."""
  import os

  from PIL import Image

  v = np.asarray(videos_RTHWC)
  frames = [image_grid(v[:, t], cols=1) for t in range(v.shape[1])]
  os.makedirs(os.path.dirname(path), exist_ok=True)
  pil = [Image.fromarray(f) for f in frames]
  pil[0].save(path, save_all=True, append_images=pil[1:], duration=int(1000 / fps), loop=0)
