"""Every module of dreamer4/ and data_pipelines/ imports in a fresh process, and the
project's modules import each other without a cycle (function-local imports included)."""

import ast
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("dreamer4", "data_pipelines")

# Function-local imports that may close a cycle, each with its reason (keeping jax out of a
# data module or TensorFlow lazy are the only accepted reasons): none today.
ALLOWED_LOCAL_EDGES: dict[tuple[str, str], str] = {}


def _modules() -> dict[str, str]:
  """Module name -> source path, for every .py file under PACKAGES."""
  out = {}
  for pkg in PACKAGES:
    for dirpath, _, files in os.walk(os.path.join(ROOT, pkg)):
      for f in files:
        if f.endswith(".py"):
          parts = os.path.relpath(os.path.join(dirpath, f), ROOT)[:-3].split(os.sep)
          out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = os.path.join(dirpath, f)
  return out


def _import_edges(mods: dict[str, str]) -> dict[tuple[str, str], bool]:
  """(importer, imported) -> whether every import of that edge sits inside a function."""

  def owner(name):  # the project module that `name` is, or lies in
    while name and name not in mods:
      name = name.rpartition(".")[0]
    return name

  edges: dict[tuple[str, str], bool] = {}

  def add(src, name, local):
    dst = owner(name)
    if dst and dst != src:
      edges[(src, dst)] = edges.get((src, dst), True) and local

  for mod, path in mods.items():
    is_pkg = path.endswith("__init__.py")

    def visit(node, local, mod=mod, is_pkg=is_pkg):
      for child in ast.iter_child_nodes(node):
        inner = local or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        if isinstance(child, ast.Import):
          for a in child.names:
            add(mod, a.name, inner)
        elif isinstance(child, ast.ImportFrom):
          base = child.module or ""
          if child.level:  # relative: from the package of `mod`
            pkg = mod.split(".") if is_pkg else mod.split(".")[:-1]
            base = ".".join(pkg[: len(pkg) - child.level + 1] + ([base] if base else []))
          for a in child.names:  # `from pkg import submodule` imports the submodule
            full = f"{base}.{a.name}"
            add(mod, full if full in mods else base, inner)
        visit(child, inner)

    visit(ast.parse(open(path, encoding="utf-8").read()), False)
  return edges


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """The strongly connected components with more than one module (Tarjan)."""
  index, low, stack, on_stack, out = {}, {}, [], set(), []

  def connect(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in graph.get(v, ()):
      if w not in index:
        connect(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      comp = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        comp.append(w)
        if w == v:
          break
      if len(comp) > 1:
        out.append(sorted(comp))

  for v in sorted(graph):
    if v not in index:
      connect(v)
  return out


def test_no_import_cycles():
  edges = _import_edges(_modules())
  assert ("dreamer4.pipeline", "dreamer4.phases") in edges  # the graph really is built
  for edge in ALLOWED_LOCAL_EDGES:
    assert edges.get(edge), f"{edge} is allowed to close a cycle but is not a function-local import"
  graph: dict[str, set[str]] = {}
  for (src, dst), _ in edges.items():
    if (src, dst) not in ALLOWED_LOCAL_EDGES:
      graph.setdefault(src, set()).add(dst)
  cycles = _cycles(graph)
  detail = [
    [
      f"{a} -> {b}" + (" (function-local)" if edges[(a, b)] else "")
      for a in c
      for b in sorted(graph.get(a, ()))
      if b in c
    ]
    for c in cycles
  ]
  assert not cycles, detail


def test_every_module_imports_in_a_fresh_process():
  mods = sorted(_modules())
  # Entry points define their absl flags at import (both CLIs define --workdir): one process each.
  groups = [[m for m in mods if not m.endswith(".__main__")]] + [[m] for m in mods if m.endswith(".__main__")]
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  for group in groups:
    code = (
      "import importlib, sys\n"
      f"for m in {group!r}:\n"
      "  importlib.import_module(m)\n"
      "assert 'tensorflow' not in sys.modules, 'an import pulled in TensorFlow; keep it lazy'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
