"""Parameter trees of the unscanned and the scanned transformer layouts, and the map between them.

A transformer's subtree is either unscanned, one subtree per layer i,
  {"blocks": {i: layer_i}, "final_norm": ...},
or scanned (`transformer.Transformer(scan_layers=True)`), one stacked subtree per
position j inside a group of time_every layers,
  {"groups": {"blocks": {j: stacked_j}}, "final_norm": ...},
where stacked_j[g] holds layer i = g * time_every + j.

`convert_layout(tree, like)` rewrites every transformer of `tree` into the layout that
the same transformer has in `like`. It serves both directions and any tree that
mirrors the params (Adam moments included). Leaves may be arrays or
jax.ShapeDtypeStructs: a restore converts the abstract target into the checkpoint's
layout (`like` = the checkpoint's metadata tree), restores that, and converts the
result back (`like` = the abstract target, whose shardings the result takes).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from dreamer4.errors import CheckpointError

GROUPS, BLOCKS = "groups", "blocks"


def _get(node: Mapping, key):
  """node[key], also when one side spells a list index as int and the other as str."""
  for k in (key, str(key), int(key) if str(key).isdigit() else None):
    if k is not None and k in node:
      return node[k]
  raise KeyError(key)


def _index_keys(node: Mapping) -> list:
  """The keys of a {0: ..., 1: ...} list node, in index order."""
  return sorted(node, key=lambda k: int(k))


def is_scanned(node) -> bool:
  return isinstance(node, Mapping) and GROUPS in node and isinstance(node[GROUPS], Mapping) and BLOCKS in node[GROUPS]


def is_unscanned(node) -> bool:
  return (
    isinstance(node, Mapping)
    and BLOCKS in node
    and GROUPS not in node
    and isinstance(node[BLOCKS], Mapping)
    and all(str(k).isdigit() for k in node[BLOCKS])
  )


def _is_abstract(x) -> bool:
  return isinstance(x, jax.ShapeDtypeStruct)


def _target_sharding(like):
  s = getattr(like, "sharding", None)
  return s if isinstance(s, jax.sharding.Sharding) else None


def _with_leading(sharding, add: bool):
  """`sharding` of a leaf after adding (or removing) a leading, unsharded layer axis."""
  if not isinstance(sharding, NamedSharding):
    return sharding
  spec = tuple(sharding.spec)
  if add:
    return NamedSharding(sharding.mesh, P(None, *spec))
  if spec and spec[0] is not None:
    raise ValueError(f"the layer axis of a stacked parameter is sharded ({sharding.spec})")
  return NamedSharding(sharding.mesh, P(*spec[1:]))


def _stack_leaf(leaves: list, like):
  first = leaves[0]
  if first is None:
    return None
  if _is_abstract(first):
    sharding = _target_sharding(like) or _with_leading(first.sharding, add=True)
    return jax.ShapeDtypeStruct((len(leaves),) + tuple(first.shape), first.dtype, sharding=sharding)
  sharding = _target_sharding(like)
  stacked = jnp.stack(leaves)
  return stacked if sharding is None else jax.device_put(stacked, sharding)


def _unstack_leaf(leaf, num: int, likes: list) -> list:
  if leaf is None:
    return [None] * num
  if _is_abstract(leaf):
    return [
      jax.ShapeDtypeStruct(
        tuple(leaf.shape[1:]), leaf.dtype, sharding=_target_sharding(like) or _with_leading(leaf.sharding, add=False)
      )
      for like in likes
    ]
  out = []
  for g, like in enumerate(likes):
    sharding = _target_sharding(like)
    out.append(leaf[g] if sharding is None else jax.device_put(leaf[g], sharding))
  return out


def _map_leaves(fn, trees: list, like):
  """fn(list of leaves, like leaf) over trees of one structure (dicts with index or name keys)."""
  first = trees[0]
  if isinstance(first, Mapping):
    return {
      k: _map_leaves(fn, [_get(t, k) for t in trees], _get(like, k) if isinstance(like, Mapping) else None)
      for k in first
    }
  return fn(trees, like)


def _stack(node: Mapping, like: Mapping) -> dict:
  """Unscanned transformer `node` -> the scanned layout of `like`."""
  blocks = node[BLOCKS]
  like_blocks = like[GROUPS][BLOCKS]
  per_group = len(like_blocks)
  depth = len(blocks)
  if depth % per_group:
    raise CheckpointError(
      f"an unscanned transformer of {depth} layers cannot fill groups of {per_group} "
      f"(time_every) layers; build the model with --config.model.scan_layers=False"
    )
  keys = _index_keys(blocks)
  groups = {}
  for j, like_key in enumerate(_index_keys(like_blocks)):
    layers = [blocks[keys[g * per_group + j]] for g in range(depth // per_group)]
    groups[j] = _map_leaves(_stack_leaf, layers, like_blocks[like_key])
  out = {k: convert_layout(v, _get(like, k) if _has(like, k) else None) for k, v in node.items() if k != BLOCKS}
  out[GROUPS] = {BLOCKS: groups}
  return out


def _unstack(node: Mapping, like: Mapping) -> dict:
  """Scanned transformer `node` -> the unscanned layout of `like`."""
  groups = node[GROUPS][BLOCKS]
  per_group = len(groups)
  num_groups = jax.tree.leaves(groups)[0].shape[0]
  like_blocks = like[BLOCKS]
  like_keys = _index_keys(like_blocks)
  if len(like_keys) != num_groups * per_group:
    raise CheckpointError(
      f"a scanned transformer of {num_groups} x {per_group} layers does not match an "
      f"unscanned one of {len(like_keys)} layers; the model settings disagree"
    )
  blocks = {}
  for j, key in enumerate(_index_keys(groups)):
    likes = [like_blocks[like_keys[g * per_group + j]] for g in range(num_groups)]
    per_layer = _split_tree(groups[key], num_groups, likes)
    for g in range(num_groups):
      blocks[g * per_group + j] = per_layer[g]
  out = {k: convert_layout(v, _get(like, k) if _has(like, k) else None) for k, v in node.items() if k != GROUPS}
  out[BLOCKS] = dict(sorted(blocks.items()))
  return out


def _split_tree(tree, num: int, likes: list) -> list:
  """A stacked subtree -> `num` per-layer subtrees (targets `likes`)."""
  if isinstance(tree, Mapping):
    parts = {
      k: _split_tree(v, num, [_get(l, k) if isinstance(l, Mapping) else None for l in likes]) for k, v in tree.items()
    }
    return [{k: parts[k][g] for k in tree} for g in range(num)]
  return _unstack_leaf(tree, num, likes)


def convert_layout(tree: Any, like: Any) -> Any:
  """`tree` with every transformer in the layer layout of `like` (scanned or unscanned).

  Args:
    tree: A params-like tree (nested dicts; arrays or ShapeDtypeStructs at the leaves).
    like: A tree of the same model in the wanted layout: params, abstract params, or an
      Orbax metadata tree. Leaves of `like` that carry a jax Sharding give the result's.

  Returns:
    The converted tree; parts whose layouts already agree come back unchanged
    (placed on `like`'s shardings when it has them).
  """
  if like is None:
    return tree
  if not isinstance(like, Mapping) and hasattr(like, "keys") and hasattr(like, "__getitem__"):
    like = {k: like[k] for k in like.keys()}  # Orbax's tree metadata is dict-like, not a Mapping
  if isinstance(tree, Mapping):
    if is_unscanned(tree) and is_scanned(like):
      return _stack(tree, like)
    if is_scanned(tree) and is_unscanned(like):
      return _unstack(tree, like)
    if not isinstance(like, Mapping):
      return tree
    return {k: convert_layout(v, _get(like, k) if _has(like, k) else None) for k, v in tree.items()}
  if isinstance(tree, (list, tuple)) and type(tree) is not jax.ShapeDtypeStruct:
    if isinstance(like, Mapping) and hasattr(tree, "_fields"):  # a namedtuple vs its metadata dict
      items = [convert_layout(v, like.get(f)) for f, v in zip(tree._fields, tree)]
    elif isinstance(like, (list, tuple)) and len(like) == len(tree):
      items = [convert_layout(v, l) for v, l in zip(tree, like)]
    else:
      return tree
    return type(tree)(*items) if hasattr(tree, "_fields") else type(tree)(items)
  sharding = _target_sharding(like)
  if sharding is not None and isinstance(tree, jax.Array) and tree.sharding != sharding:
    return jax.device_put(tree, sharding)
  return tree


def _has(node: Mapping, key) -> bool:
  try:
    _get(node, key)
    return True
  except KeyError:
    return False
