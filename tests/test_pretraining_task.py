"""The pre-training task's objective inside the trainer's step: metrics, masked decoding,
gradient accumulation, mixed precision."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import pretrain
from lxmert_jax.model.config import LxmertConfig
from lxmert_jax.model.encoders import dummy_inputs
from lxmert_jax.model.task_models import LxmertForPreTraining
from lxmert_jax.objectives import losses
from lxmert_jax.objectives import pretraining
from lxmert_jax.tasks import pretraining as pretraining_task
from lxmert_jax.training import step as step_lib

TINY = LxmertConfig(vocab_size=64, hidden_size=32, num_attention_heads=4, intermediate_size=64,
                    l_layers=1, x_layers=1, r_layers=1, visual_feat_dim=16, num_qa_labels=8,
                    num_object_labels=12, num_attr_labels=8, max_position_embeddings=16,
                    hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


pytestmark = pytest.mark.usefixtures("fast_compile")


def _batch(b=8, t=8, o=4, seed=0):
  rng = np.random.default_rng(seed)
  cfg = TINY
  ids = rng.integers(1, cfg.vocab_size, (b, t)).astype(np.int32)
  mlm = np.where(rng.uniform(size=(b, t)) < 0.3, ids, -100).astype(np.int32)
  mlm[:, 1] = ids[:, 1]
  return dict(
      input_ids=ids, attention_mask=np.ones((b, t), np.int32),
      token_type_ids=np.zeros((b, t), np.int32),
      visual_feats=rng.normal(size=(b, o, cfg.visual_feat_dim)).astype(np.float32),
      visual_pos=rng.uniform(size=(b, o, 4)).astype(np.float32),
      visual_attention_mask=np.ones((b, o), np.int32), masked_lm_labels=mlm,
      matched_label=rng.integers(0, 2, b).astype(np.int32),
      ans=rng.integers(0, cfg.num_qa_labels, b).astype(np.int32),
      obj_labels=rng.integers(0, cfg.num_object_labels, (b, o)).astype(np.int32),
      obj_conf=rng.uniform(size=(b, o)).astype(np.float32),
      attr_labels=rng.integers(0, cfg.num_attr_labels, (b, o)).astype(np.int32),
      attr_conf=rng.uniform(size=(b, o)).astype(np.float32),
      feat_targets=rng.normal(size=(b, o, cfg.visual_feat_dim)).astype(np.float32),
      feat_mask=(rng.uniform(size=(b, o)) < 0.3).astype(np.float32))


def _params(model, cfg=TINY, seed=0):
  return nn.unbox(model.init(jax.random.key(seed), **dummy_inputs(cfg, 1, 4, 2))["params"])


def _task(cfg=TINY, mlm=0.0, feat=0.0, groups=1):
  config = pretrain.get_config("tiny")
  config.objective.qa_start_epoch = 0
  config.objective.weights.qa = 2.0
  config.mlm_decode_fraction, config.feat_decode_fraction = mlm, feat
  return pretraining_task.PretrainingTask(config, cfg, steps_per_epoch=10, num_groups=groups)


def _grads(task, params, batch, k=1):
  return jax.jit(lambda p, b: step_lib.accumulated_grads(
      task, p, b, jax.random.key(0), jnp.int32(0), k))(params, batch)


def _max_diff(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  return max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree.leaves(a),
                                                            jax.tree.leaves(b)))


# --- Objective metrics ---------------------------------------------------------


def test_switched_off_tasks_report_no_accuracy():
  cfg = TINY.replace(task_mask_lm=False, task_qa=False)
  model = LxmertForPreTraining(cfg)
  batch = _batch()
  inputs = {k: batch[k] for k in pretraining_task.MODEL_INPUTS}
  outputs = model.apply({"params": _params(model, cfg)}, **inputs)
  weights = {task: jnp.float32(1.0) for task in pretraining.TASKS}
  _, metrics = pretraining.compute(outputs, batch, cfg, weights)
  assert {"matched_count", "obj_count", "attr_count"} <= set(metrics)
  assert not {"mlm_correct", "mlm_count", "qa_correct", "qa_count"} & set(metrics)


def test_other_image_control_moves_every_box_field_together():
  batch = _batch(b=4)
  other = pretraining_task.with_other_images(batch)
  for key, value in batch.items():
    if key in pretraining_task.IMAGE_KEYS:
      np.testing.assert_array_equal(other[key][1:], value[:-1], err_msg=key)
      np.testing.assert_array_equal(other[key][0], value[-1], err_msg=key)
    else:
      np.testing.assert_array_equal(other[key], value, err_msg=key)
  per_box = {k for k, v in batch.items() if v.ndim >= 2 and v.shape[1] == 4}
  assert per_box <= set(pretraining_task.IMAGE_KEYS)


# --- Gradient accumulation ----------------------------------------------------


def _uneven_batch():
  """Micro-batch 0 (rows 0, 2, 4, 6) has most masked words; micro-batch 1 few answers."""
  batch = _batch()
  mlm = np.full_like(batch["masked_lm_labels"], -100)
  ids = batch["input_ids"]
  for row in range(8):
    scored = range(1, 7) if row % 2 == 0 else range(1, 2)
    for t in scored:
      mlm[row, t] = ids[row, t]
  batch["masked_lm_labels"] = mlm
  batch["ans"][[1, 3, 5]] = -100  # 3 of micro-batch 1's 4 questions have no answer.
  return batch


@pytest.mark.slow
@pytest.mark.parametrize("fractions", [(0.0, 0.0), (0.6, 0.6)], ids=["full", "gathered"])
def test_gradient_accumulation_gives_the_whole_batchs_gradient(fractions):
  task = _task(mlm=fractions[0], feat=fractions[1])
  params = _params(task.model)
  batch = jax.tree.map(jnp.asarray, _uneven_batch())
  counts = task.loss_counts(batch)
  assert float(counts["mlm"]) == 4 * 6 + 4 * 1 and float(counts["qa"]) == 5
  with jax.default_matmul_precision("float32"):
    whole, whole_metrics = _grads(task, params, batch, k=1)
    accumulated, metrics = _grads(task, params, batch, k=2)
    # What averaging the two micro-batches' own means would give instead.
    parts = [_grads(task, params, jax.tree.map(lambda x, i=i: x[i::2], batch), k=1)
             for i in range(2)]
  mean_of_means = jax.tree.map(lambda a, b: (a + b) / 2, parts[0][0], parts[1][0])
  assert _max_diff(accumulated, whole) < 1e-6
  assert _max_diff(mean_of_means, whole) > 1e-4  # The test can tell the two apart.
  for key in ("loss", "loss/mlm", "loss/qa", "loss/feat", "mlm_count", "qa_correct"):
    assert float(metrics[key]) == pytest.approx(float(whole_metrics[key]), rel=1e-5), key


# --- Masked decoding ------------------------------------------------------------


@pytest.mark.slow
def test_decoding_gathered_masked_rows_keeps_loss_and_gradients():
  batch = jax.tree.map(jnp.asarray, _batch())
  assert 0 < int(jnp.sum(batch["feat_mask"] > 0)) < batch["feat_mask"].size
  # (MLM, feature) fractions and groups: off; room for every masked row
  # (gathered, in one block and in four); too little room for the MLM
  # labels, then for the masked boxes (falls back).
  settings = ((0.0, 0.0, 1), (0.6, 0.6, 1), (0.8, 0.8, 4), (0.05, 0.6, 1), (0.6, 0.01, 1))
  params = _params(LxmertForPreTraining(TINY))
  with jax.default_matmul_precision("float32"):
    (g0, m0), *others = [_grads(_task(mlm=m, feat=f, groups=g), params, batch)
                         for m, f, g in settings]
  assert [float(m["decode_fallback"]) for _, m in others] == [0.0, 0.0, 1.0, 1.0]
  for grads, metrics in others:
    assert float(metrics["loss"]) == pytest.approx(float(m0["loss"]), rel=1e-6)
    assert float(metrics["loss/feat"]) == pytest.approx(float(m0["loss/feat"]), rel=1e-6)
    assert float(metrics["mlm_correct"]) == float(m0["mlm_correct"])
    assert float(metrics["mlm_count"]) == float(m0["mlm_count"])
    assert _max_diff(grads, g0) < 1e-6


@pytest.mark.slow
def test_step_gradients_equal_the_whole_models_loss_gradients():
  # The step differentiates the backbone and the heads separately (the heads
  # inside the decoding branches); together they must give the gradient of
  # the model's own loss, the tied word embeddings included.
  model = LxmertForPreTraining(TINY)
  params = _params(model)
  batch = jax.tree.map(jnp.asarray, _batch())
  weights = {k: 2.0 if k == "qa" else 1.0 for k in pretraining.TASKS}

  def whole(p):
    out = model.apply({"params": p}, **{k: batch[k] for k in pretraining_task.MODEL_INPUTS},
                      labels=batch["masked_lm_labels"], matched_label=batch["matched_label"],
                      obj_labels=losses.batch_visual_labels(batch), ans=batch["ans"])
    return sum(weights[k] * v for k, v in out.loss_terms.items())

  with jax.default_matmul_precision("float32"):
    loss, expected = jax.jit(jax.value_and_grad(whole))(params)
    for fractions in ((0.0, 0.0), (0.6, 0.6)):
      grads, metrics = _grads(_task(mlm=fractions[0], feat=fractions[1]), params, batch)
      assert float(metrics["decode_fallback"]) == 0.0
      assert float(metrics["loss"]) == pytest.approx(float(loss), rel=1e-6)
      assert jax.tree.structure(grads) == jax.tree.structure(expected)
      flat = jax.tree_util.tree_flatten_with_path(grads)[0]
      for (path, a), b in zip(flat, jax.tree.leaves(expected)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=str(path))


def test_bfloat16_compute_keeps_float32_parameters_and_gradients():
  cfg = TINY.replace(dtype="bfloat16", param_dtype="float32")
  task = _task(cfg)
  params = _params(task.model, cfg)
  assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}
  grads, metrics = _grads(task, params, jax.tree.map(jnp.asarray, _batch()))
  assert {x.dtype for x in jax.tree.leaves(grads)} == {jnp.dtype(jnp.float32)}
  assert metrics["loss"].dtype == jnp.float32 and np.isfinite(float(metrics["loss"]))
