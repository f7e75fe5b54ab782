"""Agent heads on the agent-token embedding h_t: policy, reward and value [P §3.3].

All heads are "small MLPs with one output layer per MTP distance" [P §3.3]: a shared
trunk (RMSNorm, then `num_layers` x (dense + SiLU)) followed by one output layer per
offset n = 0..L, stored as one stacked weight [L+1, M, P]. The trunk width and depth
are not stated by the paper (defaults here are our choice).

Policy distributions follow the dataset's `ActionSpec`, component by component:
  discrete   -> one categorical over `size` classes (one int32 column),
  binary     -> `size` independent Bernoullis (`size` int32 0/1 columns),
  continuous -> `size` independent Gaussians, no tanh squashing, with a learned,
                state-dependent log std (the paper has no continuous actions; this is
                the reimplementations' choice [Impl]).
Actions are `Action`s (data_pipelines/envs/base.py): discrete int32 [..., Ad] and
continuous float32 [..., Ac] columns in the data pipeline's layout, so sampled actions can
be fed back to the dynamics. The functions here read only those two fields (a sample is
labelled; `labelled` is never read).

Distribution parameters are kept as one flat vector per state ("params", [..., P]);
the module-level functions below (log_prob, entropy, kl, sample) read it with the spec,
so a frozen prior's params and the trained policy's params can be compared directly.

Shape letters: N any leading shape, D agent-embedding width, M trunk width, L number
of MTP offsets (L+1 output layers), P distribution parameters, K two-hot bins.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from data_pipelines.envs.base import Action, ActionSpec
from dreamer4.models.transformer import RMSNorm, fan_in_init, make_param
from dreamer4.objectives.twohot import TwoHot

# Clip range for the Gaussian log std: keeps exp() finite and the NLL bounded early on.
# Not from the paper (it has no continuous actions).
LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0


# ----------------------------------------------------------------------------------
# Distributions over ActionSpec actions, read from flat parameter vectors.
# ----------------------------------------------------------------------------------


def num_params(spec: ActionSpec) -> int:
  """Length P of the flat parameter vector for `spec`."""
  return sum(2 * c.size if c.kind == "continuous" else c.size for c in spec.components)


def _split(spec: ActionSpec, params_NP):
  """Yields (component, its params slice, discrete col range, continuous col range)."""
  p = dc = cc = 0
  for comp in spec.components:
    width = 2 * comp.size if comp.kind == "continuous" else comp.size
    part = params_NP[..., p : p + width].astype(jnp.float32)
    p += width
    if comp.kind == "continuous":
      yield comp, part, None, (cc, cc + comp.size)
      cc += comp.size
    else:
      yield comp, part, (dc, dc + comp.columns), None
      dc += comp.columns


def _gauss(part):
  size = part.shape[-1] // 2
  mean = part[..., :size]
  log_std = jnp.clip(part[..., size:], LOG_STD_MIN, LOG_STD_MAX)
  return mean, log_std


def log_prob(spec: ActionSpec, params_NP, actions: Action):
  """Log-likelihood [N] of an action (summed over components and their dimensions).

  Args:
    spec: the action space.
    params_NP: flat distribution parameters.
    actions: an Action with leading shape [N] (its discrete and continuous columns).
  """
  disc_NA, cont_NA = actions.discrete, actions.continuous
  total = jnp.zeros(params_NP.shape[:-1], jnp.float32)
  for comp, part, dcols, ccols in _split(spec, params_NP):
    if comp.kind == "discrete":
      # Clipped so that a garbage label at a masked-out target (padding) cannot turn the
      # whole masked mean into NaN; valid labels are in range anyway.
      label = jnp.clip(disc_NA[..., dcols[0]].astype(jnp.int32), 0, comp.size - 1)
      logp = jax.nn.log_softmax(part, axis=-1)
      total += jnp.take_along_axis(logp, label[..., None], axis=-1)[..., 0]
    elif comp.kind == "binary":
      bits = disc_NA[..., dcols[0] : dcols[1]].astype(jnp.float32)
      total += jnp.sum(bits * jax.nn.log_sigmoid(part) + (1.0 - bits) * jax.nn.log_sigmoid(-part), axis=-1)
    else:
      x = cont_NA[..., ccols[0] : ccols[1]].astype(jnp.float32)
      mean, log_std = _gauss(part)
      z = (x - mean) * jnp.exp(-log_std)
      total += jnp.sum(-0.5 * jnp.square(z) - log_std - 0.5 * math.log(2 * math.pi), axis=-1)
  return total


def entropy(spec: ActionSpec, params_NP):
  """Entropy [N] in nats (sum over components; Gaussian entropy is differential)."""
  total = jnp.zeros(params_NP.shape[:-1], jnp.float32)
  for comp, part, _, _ in _split(spec, params_NP):
    if comp.kind == "discrete":
      logp = jax.nn.log_softmax(part, axis=-1)
      total += -jnp.sum(jnp.exp(logp) * logp, axis=-1)
    elif comp.kind == "binary":
      p = jax.nn.sigmoid(part)
      total += -jnp.sum(p * jax.nn.log_sigmoid(part) + (1.0 - p) * jax.nn.log_sigmoid(-part), axis=-1)
    else:
      _, log_std = _gauss(part)
      total += jnp.sum(log_std + 0.5 * math.log(2 * math.pi * math.e), axis=-1)
  return total


def kl(spec: ActionSpec, params_p_NP, params_q_NP):
  """Analytic KL[p || q] [N], summed over components ([P Eq 11]: factorised KL).

  For PMPO's reverse KL pass p = the trained policy, q = the frozen BC prior.
  """
  total = jnp.zeros(params_p_NP.shape[:-1], jnp.float32)
  parts_q = list(_split(spec, params_q_NP))
  for (comp, pp, _, _), (_, qq, _, _) in zip(_split(spec, params_p_NP), parts_q):
    if comp.kind == "discrete":
      lp, lq = jax.nn.log_softmax(pp, axis=-1), jax.nn.log_softmax(qq, axis=-1)
      total += jnp.sum(jnp.exp(lp) * (lp - lq), axis=-1)
    elif comp.kind == "binary":
      p1 = jax.nn.sigmoid(pp)
      total += jnp.sum(
        p1 * (jax.nn.log_sigmoid(pp) - jax.nn.log_sigmoid(qq))
        + (1.0 - p1) * (jax.nn.log_sigmoid(-pp) - jax.nn.log_sigmoid(-qq)),
        axis=-1,
      )
    else:
      mp, lsp = _gauss(pp)
      mq, lsq = _gauss(qq)
      var_ratio = jnp.exp(2.0 * (lsp - lsq))
      total += jnp.sum(lsq - lsp + 0.5 * (var_ratio + jnp.square(mp - mq) * jnp.exp(-2.0 * lsq)) - 0.5, axis=-1)
  return total


def sample(spec: ActionSpec, params_NP, rng) -> Action:
  """Samples a labelled Action [N]: discrete int32 [N, Ad], continuous float32 [N, Ac]."""
  lead = params_NP.shape[:-1]
  disc, cont = [], []
  for comp, part, _, _ in _split(spec, params_NP):
    rng, key = jax.random.split(rng)
    if comp.kind == "discrete":
      disc.append(jax.random.categorical(key, part, axis=-1)[..., None].astype(jnp.int32))
    elif comp.kind == "binary":
      disc.append(jax.random.bernoulli(key, jax.nn.sigmoid(part)).astype(jnp.int32))
    else:
      mean, log_std = _gauss(part)
      cont.append(mean + jnp.exp(log_std) * jax.random.normal(key, mean.shape, jnp.float32))
  disc_NA = jnp.concatenate(disc, axis=-1) if disc else jnp.zeros((*lead, 0), jnp.int32)
  cont_NA = jnp.concatenate(cont, axis=-1) if cont else jnp.zeros((*lead, 0), jnp.float32)
  return Action.labelled_from(disc_NA, cont_NA)


# ----------------------------------------------------------------------------------
# Modules.
# ----------------------------------------------------------------------------------


class _MTPMLP(nnx.Module):
  """RMSNorm -> num_layers x (dense + SiLU) -> one output layer per offset n = 0..L."""

  def __init__(
    self,
    *,
    width: int,
    hidden: int,
    num_layers: int,
    num_offsets: int,
    out_dim: int,
    zero_init_out: bool,
    rngs: nnx.Rngs,
  ):
    self.norm = RMSNorm(width, rngs=rngs)
    self.weights, self.biases = nnx.List(), nnx.List()
    fan_in = width
    for i in range(num_layers):
      # A logical name may appear only once per parameter, so hidden-to-hidden is (None, "mlp").
      names = ("embed", "mlp") if i == 0 else (None, "mlp")
      self.weights.append(make_param(rngs, fan_in_init(fan_in), (fan_in, hidden), names))
      self.biases.append(make_param(rngs, nnx.initializers.zeros, (hidden,), ("mlp",)))
      fan_in = hidden
    out_init = nnx.initializers.zeros if zero_init_out else fan_in_init(fan_in)
    in_name = "mlp" if num_layers else "embed"
    self.w_out = make_param(rngs, out_init, (num_offsets, fan_in, out_dim), (None, in_name, "vocab"))
    self.b_out = make_param(rngs, nnx.initializers.zeros, (num_offsets, out_dim), (None, "vocab"))

  def __call__(self, h_ND, n: int | None = None):
    """Returns outputs [N, L+1, P] for all offsets, or [N, P] for offset `n`."""
    x = self.norm(h_ND.astype(jnp.float32))
    for w, b in zip(self.weights, self.biases):
      x = jax.nn.silu(x @ w[...] + b[...])
    if n is None:
      return jnp.einsum("...m,lmp->...lp", x, self.w_out[...]) + self.b_out[...]
    return x @ self.w_out[...][n] + self.b_out[...][n]


class PolicyHead(nnx.Module):
  """Policy with one output layer per MTP offset [P §3.3].

  Offset n at frame t models the action a_{t+1+n} (see dreamer4/objectives/agent.py for
  the alignment); n = 0 is the head that acts in imagination.
  """

  def __init__(
    self, spec: ActionSpec, *, width: int, hidden: int = 256, num_layers: int = 2, mtp: int = 8, rngs: nnx.Rngs
  ):
    """Args:
    spec: the action space.
    width: D, width of the agent embedding.
    hidden: M, trunk width (paper: not stated).
    num_layers: trunk depth (paper: not stated).
    mtp: L; the head has L+1 output layers (paper: L = 8).
    rngs: parameter rngs.
    """
    self.spec = spec
    self.mtp = mtp
    self.mlp = _MTPMLP(
      width=width,
      hidden=hidden,
      num_layers=num_layers,
      num_offsets=mtp + 1,
      out_dim=num_params(spec),
      zero_init_out=False,
      rngs=rngs,
    )

  def params(self, h_ND, n: int | None = None):
    """Flat distribution parameters: [N, P] for offset n, or [N, L+1, P] when n is None."""
    return self.mlp(h_ND, n)

  def log_prob(self, h_ND, actions, n: int | None = 0):
    """log pi(a | h) [N] at offset n; with n=None, actions carry an L+1 axis and the result is [N, L+1]."""
    return log_prob(self.spec, self.params(h_ND, n), actions)

  def sample(self, h_ND, rng, n: int = 0):
    return sample(self.spec, self.params(h_ND, n), rng)

  def entropy(self, h_ND, n: int = 0):
    return entropy(self.spec, self.params(h_ND, n))

  def kl(self, h_ND, other_params_NP, n: int = 0):
    """KL[this policy || other] [N], other given by its flat params (e.g. a frozen prior's)."""
    return kl(self.spec, self.params(h_ND, n), other_params_NP)


class ScalarHead(nnx.Module):
  """Symlog-binned scalar head: MLP -> per-offset logits over the encoder's bins.

  The output layer is zero-initialised as in Dreamer 3 (so initial predictions are 0
  and early value/reward errors do not blow up); the paper does not say.
  """

  def __init__(self, *, width: int, hidden: int = 256, num_layers: int = 2, mtp: int = 8, encoder=None, rngs: nnx.Rngs):
    self.encoder = encoder if encoder is not None else TwoHot()
    self.mtp = mtp
    self.mlp = _MTPMLP(
      width=width,
      hidden=hidden,
      num_layers=num_layers,
      num_offsets=mtp + 1,
      out_dim=self.encoder.num_bins,
      zero_init_out=True,
      rngs=rngs,
    )

  def logits(self, h_ND, n: int | None = 0):
    """Bin logits [N, K] at offset n, or [N, L+1, K] when n is None."""
    return self.mlp(h_ND, n)

  def predict(self, h_ND, n: int = 0):
    """Point prediction [N] (symexp of the expected bin)."""
    return self.encoder.decode(self.logits(h_ND, n))

  def loss(self, h_ND, target_N, n: int | None = 0):
    """Cross-entropy with the encoded target: [N] at offset n, [N, L+1] when n is None."""
    return self.encoder.loss(self.logits(h_ND, n), target_N)


class RewardHead(ScalarHead):
  """Reward head, one output layer per MTP offset [P §3.3, Eq 9]."""


class ValueHead(ScalarHead):
  """Value head [P Eq 10]. It predicts lambda-returns of the current state only, so mtp=0."""

  def __init__(self, *, width: int, hidden: int = 256, num_layers: int = 2, encoder=None, rngs: nnx.Rngs):
    super().__init__(width=width, hidden=hidden, num_layers=num_layers, mtp=0, encoder=encoder, rngs=rngs)
