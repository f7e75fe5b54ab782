"""Jitted functions compiled ahead of time, once per input signature, that count their compiles.

jax.jit keeps its executables in a private cache (`_cache_size()`); `AotJit` lowers and
compiles through the public `jax.stages` API instead, one executable per input signature
(tree structure, abstract values with weak types, shardings), so `compiles` says how many
programs were built. The train step (`training.state.TrainStep`), the world model's frame
step (`inference.world.World`), the evaluation agent and the benchmarks use it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax


class AotJit:
  """`jax.jit(fn, **jit_kwargs)` whose executables are built with `lower(...).compile()`."""

  def __init__(self, fn: Callable, **jit_kwargs):
    self._jit = jax.jit(fn, **jit_kwargs)
    self._compiled: dict = {}

  @property
  def compiles(self) -> int:
    """Executables built so far: one per input signature."""
    return len(self._compiled)

  def lower(self, *args) -> jax.stages.Lowered:
    """The function lowered for these inputs (arrays or ShapeDtypeStructs with shardings); not counted."""
    return self._jit.lower(*args)

  def compile(self, *args) -> jax.stages.Compiled:
    """The executable for these inputs' signature, lowered and compiled on first use."""
    leaves, tree = jax.tree.flatten(args)
    sig = (tree, tuple((jax.typeof(x), getattr(x, "sharding", None)) for x in leaves))
    if sig not in self._compiled:
      self._compiled[sig] = self.lower(*args).compile()
    return self._compiled[sig]

  def __call__(self, *args) -> Any:
    return self.compile(*args)(*args)
