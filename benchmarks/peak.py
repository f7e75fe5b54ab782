"""The matmul throughput that the benchmarks' MFU figures are measured against."""

from __future__ import annotations

import time
from collections.abc import Sequence


def matmul_peak(sizes: Sequence[int] = (1024, 2048), repeats: int = 5, dtype: str = "float32") -> list[dict]:
  """Measures jitted `a @ b` throughput, best of `repeats` runs per size.

  Args:
    sizes: square matrix sizes n (2 n^3 FLOPs each).
    repeats: timed runs per size after one warm-up; the fastest counts.
    dtype: element type.

  Returns:
    One dict per size with n, dtype, seconds (best) and gflops.
  """
  import jax

  matmul = jax.jit(lambda a, b: a @ b)
  out = []
  for n in sizes:
    ka, kb = jax.random.split(jax.random.key(n))
    a = jax.random.normal(ka, (n, n), dtype)
    b = jax.random.normal(kb, (n, n), dtype)
    matmul(a, b).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
      t0 = time.perf_counter()
      matmul(a, b).block_until_ready()
      best = min(best, time.perf_counter() - t0)
    out.append(dict(bench="matmul_peak", n=int(n), dtype=dtype, seconds=best, gflops=2 * n**3 / best / 1e9))
  return out
