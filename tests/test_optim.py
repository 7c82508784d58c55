"""BertAdam, its schedule and its clipping against the reference arithmetic."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from lxmert_jax.training import optimizers


def reference_bert_adam(params, grads_per_step, *, lr, warmup, t_total, max_norm,
                        b1=0.9, b2=0.999, eps=1e-6, weight_decay=0.01):
  """A numpy transcription of the reference training step.

  `torch.nn.utils.clip_grad_norm_(params, max_norm)` followed by
  `BertAdam.step()` from the reference's `lxrt/optimization.py` (internal
  clipping off), written loop by loop as the PyTorch code does it.
  """
  params = {k: v.astype(np.float64).copy() for k, v in params.items()}
  state = {k: {"step": 0, "next_m": np.zeros_like(v), "next_v": np.zeros_like(v)}
           for k, v in params.items()}

  def schedule(x):
    if x < warmup:
      return x / warmup
    return max((x - 1.0) / (warmup - 1.0), 0.0)

  for grads in grads_per_step:
    grads = {k: g.astype(np.float64) for k, g in grads.items()}
    total_norm = np.sqrt(sum(np.sum(g ** 2) for g in grads.values()))
    clip_coef = max_norm / (total_norm + 1e-6)
    if clip_coef < 1:
      grads = {k: g * clip_coef for k, g in grads.items()}
    for name, p in params.items():
      s = state[name]
      s["next_m"] = s["next_m"] * b1 + (1 - b1) * grads[name]
      s["next_v"] = s["next_v"] * b2 + (1 - b2) * grads[name] * grads[name]
      update = s["next_m"] / (np.sqrt(s["next_v"]) + eps)
      update = update + weight_decay * p
      lr_scheduled = lr * schedule(s["step"] / t_total)
      params[name] = p - lr_scheduled * update
      s["step"] += 1
  return params


def _config(**kw):
  cfg = ml_collections.ConfigDict(dict(
      name="bert_adam", lr=1e-2, warmup=0.25, b1=0.9, b2=0.999, eps=1e-6,
      weight_decay=0.01, clip_norm=1.0))
  cfg.update(kw)
  return cfg


def test_bert_adam_matches_reference_over_several_steps():
  rng = np.random.default_rng(0)
  params = {"kernel": rng.normal(size=(4, 3)).astype(np.float32),
            "bias": rng.normal(size=(3,)).astype(np.float32),
            "scale": np.ones((3,), np.float32)}
  # Mix large gradients (clipped) and small ones (not clipped).
  grads_per_step = [{k: (rng.normal(size=v.shape) * (3.0 if i % 2 else 0.05)).astype(np.float32)
                     for k, v in params.items()} for i in range(8)]
  t_total = 8
  tx, _ = optimizers.make_optimizer(_config(), t_total)
  state = tx.init(params)
  ours = jax.tree.map(jnp.asarray, params)
  update = jax.jit(tx.update)
  for grads in grads_per_step:
    updates, state = update(grads, state, ours)
    ours = optax.apply_updates(ours, updates)
  expected = reference_bert_adam(params, grads_per_step, lr=1e-2, warmup=0.25,
                                 t_total=t_total, max_norm=1.0)
  for k in params:
    np.testing.assert_allclose(np.asarray(ours[k]), expected[k], rtol=1e-5, atol=1e-6)


def test_first_update_has_zero_learning_rate_but_moments_move():
  params = {"w": jnp.ones((2,))}
  tx, schedule = optimizers.make_optimizer(_config(), 10)
  state = tx.init(params)
  updates, state = tx.update({"w": jnp.array([0.5, -0.5])}, state, params)
  assert float(schedule(0)) == 0.0
  np.testing.assert_array_equal(np.asarray(updates["w"]), 0.0)
  adam_state = state[1][0]
  np.testing.assert_allclose(np.asarray(adam_state.mu["w"]), [0.05, -0.05], rtol=1e-6)


@pytest.mark.parametrize("step,expected", [
    (0, 0.0), (1, 0.2), (4, 0.8), (5, 1.0), (50, 1 - 45 / 95), (99, 1 - 94 / 95), (100, 0.0),
    (120, 0.0)])
def test_warmup_linear_schedule_values(step, expected):
  # t_total 100, warm-up 5%: x = step/100; 5 warm-up steps then decay to 0.
  schedule = optimizers.learning_rate_schedule(2.0, 100, 0.05)
  assert float(schedule(step)) == pytest.approx(2.0 * expected, rel=1e-5, abs=1e-7)


def test_clipping_matches_torch_clip_grad_norm():
  torch = pytest.importorskip("torch")
  rng = np.random.default_rng(1)
  for scale in (0.01, 10.0):
    grads = {"a": (rng.normal(size=(5, 3)) * scale).astype(np.float32),
             "b": (rng.normal(size=(7,)) * scale).astype(np.float32)}
    tensors = [torch.nn.Parameter(torch.zeros(g.shape)) for g in grads.values()]
    for t, g in zip(tensors, grads.values()):
      t.grad = torch.from_numpy(g.copy())
    torch.nn.utils.clip_grad_norm_(tensors, 1.0)
    clip = optimizers.clip_by_global_norm_torch(1.0)
    ours, _ = clip.update(grads, clip.init(grads))
    for t, g in zip(tensors, ours.values()):
      np.testing.assert_allclose(np.asarray(g), t.grad.numpy(), rtol=1e-6, atol=1e-8)


def test_clipping_formula_near_threshold():
  # Norm 2 with max_norm 1: scaled by 1 / (2 + 1e-6), not exactly 1/2.
  clip = optimizers.clip_by_global_norm_torch(1.0)
  grads = {"g": jnp.array([2.0, 0.0], jnp.float32)}
  out, _ = clip.update(grads, clip.init(grads))
  np.testing.assert_allclose(np.asarray(out["g"]), [2.0 / (2.0 + 1e-6), 0.0], rtol=1e-7)
  small = {"g": jnp.array([0.3, 0.4], jnp.float32)}
  out, _ = clip.update(small, clip.init(small))
  np.testing.assert_array_equal(np.asarray(out["g"]), np.float32([0.3, 0.4]))


def test_weight_decay_applies_to_every_parameter_in_bert_adam():
  params = {"dense": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones((2,))},
            "LayerNorm": {"scale": jnp.ones((2,)), "bias": jnp.ones((2,))}}
  tx = optimizers.bert_adam(lambda step: 1.0, weight_decay=0.5)
  zero_grads = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zero_grads, tx.init(params), params)
  for leaf in jax.tree.leaves(updates):
    np.testing.assert_allclose(np.asarray(leaf), -0.5)


def test_adamw_masks_biases_and_layernorm():
  params = {"dense": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones((2,))},
            "LayerNorm": {"scale": jnp.ones((2,)), "bias": jnp.ones((2,))},
            "emb": {"embedding": jnp.ones((3, 2))}}
  mask = optimizers.decay_mask(params)
  assert mask == {"dense": {"kernel": True, "bias": False},
                  "LayerNorm": {"scale": False, "bias": False},
                  "emb": {"embedding": True}}
  tx, _ = optimizers.make_optimizer(_config(name="adamw", clip_norm=0.0, weight_decay=0.5), 10)
  state = tx.init(params)
  zero = jax.tree.map(jnp.zeros_like, params)
  # Step past the zero-lr first update, then check which leaves decayed.
  _, state = tx.update(zero, state, params)
  updates, _ = tx.update(zero, state, params)
  assert float(jnp.abs(updates["dense"]["kernel"]).max()) > 0
  assert float(jnp.abs(updates["emb"]["embedding"]).max()) > 0
  assert float(jnp.abs(updates["dense"]["bias"]).max()) == 0
  assert float(jnp.abs(updates["LayerNorm"]["scale"]).max()) == 0


def test_unknown_optimizer_name_is_an_error():
  with pytest.raises(ValueError, match="optimizer.name 'sgd'"):
    optimizers.make_optimizer(_config(name="sgd"), 10)
