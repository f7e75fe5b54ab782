"""Phase 3 loss scaling: the PMPO loss reaches the optimiser as is (no division by its running
RMS, [P App. F]) unless `imagine.normalize_policy_loss`; the value loss keeps its
RMS normalisation. `_rollout_and_losses` is replaced by fixed linear losses."""

import math

import jax
import jax.numpy as jnp
import numpy as np

DECAY = 0.99


def _phase(normalize_policy_loss=None):
  from configs import imagine
  from dreamer4.phases.imagine import ImaginePhase

  cfg = imagine.get_config("tiny")
  if normalize_policy_loss is not None:
    cfg.imagine.normalize_policy_loss = normalize_policy_loss
  cfg.loss.rms_decay = DECAY
  phase = object.__new__(ImaginePhase)
  phase.config = cfg
  # PMPO loss 0.05 * p (near 0, as at the start), value loss 4 * v.
  phase._rollout_and_losses = lambda params, batch, rng, frozen: (0.05 * params["p"], 4.0 * params["v"], {})
  return phase


def _step(phase, params, aux):
  (loss, (aux, _)), g = jax.value_and_grad(phase.loss_fn, has_aux=True)(params, aux, {}, jax.random.key(0), {})
  return float(loss), aux, {k: float(v) for k, v in g.items()}


def test_policy_loss_is_not_rms_normalised_by_default():
  phase = _phase()
  assert phase.config.imagine.normalize_policy_loss is False
  aux = phase.init_aux()
  params = {"p": jnp.float32(-1.0), "v": jnp.float32(1.0)}
  loss, aux, g = _step(phase, params, aux)
  # Step 1: value rms = |4| -> 4 / 4 = 1; the policy loss -0.05 is added as is.
  np.testing.assert_allclose(loss, -0.05 + 1.0, rtol=1e-6)
  np.testing.assert_allclose(g["p"], 0.05, rtol=1e-6)  # the raw PMPO gradient, not 0.05 / 0.05
  np.testing.assert_allclose(g["v"], 1.0, rtol=1e-6)
  assert int(aux["policy"]["count"]) == 0 and int(aux["value"]["count"]) == 1
  # Step 2, value loss 8: ema = 0.99 * 0.01 * 16 + 0.01 * 64 = 0.7984, bias-corrected by 1 - 0.99^2.
  loss, aux, g = _step(phase, {"p": jnp.float32(2.0), "v": jnp.float32(2.0)}, aux)
  rms = math.sqrt((DECAY * (1 - DECAY) * 16 + (1 - DECAY) * 64) / (1 - DECAY**2))
  np.testing.assert_allclose(rms, 6.3344, rtol=1e-4)
  np.testing.assert_allclose(loss, 0.1 + 8.0 / rms, rtol=1e-5)
  np.testing.assert_allclose(g["p"], 0.05, rtol=1e-6)
  np.testing.assert_allclose(g["v"], 4.0 / rms, rtol=1e-5)


def test_policy_loss_rms_normalised_when_switched_on():
  phase = _phase(True)
  loss, aux, g = _step(phase, {"p": jnp.float32(-1.0), "v": jnp.float32(1.0)}, phase.init_aux())
  # Step 1 of the normaliser returns sign(L): -1 + 1, and the PMPO gradient 0.05 becomes 0.05 / 0.05.
  np.testing.assert_allclose(loss, 0.0, atol=1e-6)
  np.testing.assert_allclose(g["p"], 1.0, rtol=1e-5)
  assert int(aux["policy"]["count"]) == 1 and int(aux["value"]["count"]) == 1
