"""Model structure, numerics and options that need no PyTorch."""

from __future__ import annotations

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

import lxmert_jax
from lxmert_jax.convert import checkpoints
from lxmert_jax.objectives import masked_decoding
from lxmert_jax.model.config import LxmertConfig
from model_utils import TINY, max_rel_error, random_inputs

LOGICAL_AXES = {"vocab", "embed", "embed_out", "mlp", "heads", "pos", "type", "vis_feat",
                "box", "classes", None}


def init(model, inputs, seed=0):
  return model.init(jax.random.key(seed), **inputs)["params"]


def count(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))


@pytest.mark.parametrize("cls,num_qa_labels,expected", [
    (lxmert_jax.LxmertModel, 9500, 207_936_768),
    (lxmert_jax.LxmertForPreTraining, 9500, 228_051_752),
    (lxmert_jax.LxmertForQuestionAnswering, 3129, 213_930_297),
    (lxmert_jax.LxmertForQuestionAnswering, 1842, 211_952_178),
])
def test_base_parameter_counts_match_the_reference(cls, num_qa_labels, expected):
  model = cls(LxmertConfig(num_qa_labels=num_qa_labels))
  assert count(checkpoints.abstract_params(model)) == expected


def test_every_parameter_has_logical_axis_names():
  model = lxmert_jax.LxmertForPreTraining(LxmertConfig(**TINY))
  boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), **random_inputs(1)))["params"]
  leaves = jax.tree_util.tree_leaves(
      boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
  assert leaves and all(isinstance(x, nn.LogicallyPartitioned) for x in leaves)
  for leaf in leaves:
    assert len(leaf.names) == leaf.value.ndim
    assert set(leaf.names) <= LOGICAL_AXES
  specs = nn.get_partition_spec(boxed)
  assert specs["lxmert"]["embeddings"]["word_embeddings"]["embedding"] == jax.P("vocab", "embed")
  query = specs["lxmert"]["encoder"]["x_layers_0"]["visual_attention"]["att"]["query"]
  assert query["kernel"] == jax.P("embed", "heads")
  assert specs["lxmert"]["pooler"]["dense"]["kernel"] == jax.P("embed", "embed_out")


def test_cross_attention_weights_are_shared_between_directions():
  model = lxmert_jax.LxmertModel(LxmertConfig(**TINY))
  params = nn.meta.unbox(init(model, random_inputs(1)))
  x_layer = params["encoder"]["x_layers_0"]
  assert set(x_layer) == {"visual_attention", "lang_self_att", "visn_self_att", "lang_inter",
                          "lang_output", "visn_inter", "visn_output"}
  assert set(x_layer["visual_attention"]) == {"att", "output"}


def test_initialisation_follows_the_reference():
  cfg = LxmertConfig(**dict(TINY, hidden_size=64, intermediate_size=128))
  params = nn.meta.unbox(init(lxmert_jax.LxmertForPreTraining(cfg), random_inputs(1)))
  layer = params["lxmert"]["encoder"]["layer_0"]
  assert abs(float(jnp.std(layer["intermediate"]["dense"]["kernel"])) - 0.02) < 0.003
  np.testing.assert_array_equal(layer["intermediate"]["dense"]["bias"], 0.0)
  np.testing.assert_array_equal(layer["output"]["LayerNorm"]["scale"], 1.0)
  np.testing.assert_array_equal(params["cls"]["predictions"]["bias"], 0.0)


class VariantsTest(chex.TestCase, parameterized.TestCase):
  """jit and no-jit give the same outputs."""

  @chex.variants(with_jit=True, without_jit=True)
  def test_forward(self):
    model = lxmert_jax.LxmertForPreTraining(LxmertConfig(**TINY))
    inputs = random_inputs(3)
    params = init(model, inputs)
    fn = self.variant(lambda p, x: model.apply({"params": p}, **x))
    out = fn(params, inputs)
    reference = model.apply({"params": params}, **inputs)
    chex.assert_shape(out.prediction_logits, (3, 9, TINY["vocab_size"]))
    chex.assert_shape(out.question_answering_score, (3, TINY["num_qa_labels"]))
    chex.assert_trees_all_close(out.prediction_logits, reference.prediction_logits,
                                atol=1e-5, rtol=1e-5)
    chex.assert_tree_all_finite(out.visual_prediction)


def test_bfloat16_compute_stays_close_to_float32():
  cfg = LxmertConfig(**TINY)
  inputs = random_inputs(3)
  params = init(lxmert_jax.LxmertForPreTraining(cfg), inputs)
  f32 = lxmert_jax.LxmertForPreTraining(cfg).apply({"params": params}, **inputs,
                                                    output_attentions=True)
  bf16 = lxmert_jax.LxmertForPreTraining(cfg.replace(dtype="bfloat16")).apply(
      {"params": params}, **inputs, output_attentions=True)
  assert bf16.language_output.dtype == jnp.bfloat16
  # Softmax, logits and losses are float32 whatever the compute dtype.
  assert bf16.language_attentions[0].dtype == jnp.float32
  assert bf16.prediction_logits.dtype == jnp.float32
  for field in ("prediction_logits", "cross_relationship_score", "question_answering_score",
                "language_output", "vision_output"):
    ours = getattr(bf16, field)
    chex.assert_tree_all_finite(ours)
    assert max_rel_error(ours, getattr(f32, field)) < 0.05, field


def test_dropout_uses_the_rng_and_is_off_when_deterministic():
  model = lxmert_jax.LxmertForPreTraining(LxmertConfig(**TINY))
  inputs = random_inputs(2)
  params = init(model, inputs)

  def run(rng, deterministic):
    return model.apply({"params": params}, **inputs, deterministic=deterministic,
                       rngs={"dropout": jax.random.key(rng)}).pooled_output

  np.testing.assert_array_equal(run(0, True), run(1, True))
  np.testing.assert_array_equal(run(0, False), run(0, False))
  assert not np.allclose(run(0, False), run(1, False))
  assert not np.allclose(run(0, False), run(0, True))


def test_masked_keys_do_not_change_outputs():
  model = lxmert_jax.LxmertModel(LxmertConfig(**TINY))
  inputs = random_inputs(2, pad_text=False, mask_objects=False)
  inputs["attention_mask"][0, 6:] = 0
  inputs["visual_attention_mask"][1, 3:] = 0
  params = init(model, inputs)
  out = model.apply({"params": params}, **inputs)
  changed = {k: v.copy() for k, v in inputs.items()}
  changed["input_ids"][0, 6:] = 7
  changed["visual_feats"][1, 3:] += 5.0
  again = model.apply({"params": params}, **changed)
  np.testing.assert_allclose(out.pooled_output, again.pooled_output, atol=1e-6)
  np.testing.assert_allclose(out.language_output[0, :6], again.language_output[0, :6],
                             atol=1e-6)


def test_embedding_row_zero_gets_no_lookup_gradient():
  cfg = LxmertConfig(**TINY)
  model = lxmert_jax.LxmertModel(cfg)
  inputs = random_inputs(2)
  params = init(model, inputs)
  grads = jax.grad(lambda p: jnp.sum(model.apply({"params": p}, **inputs).pooled_output))(
      params)
  emb = nn.meta.unbox(grads)["embeddings"]
  for table in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
    np.testing.assert_array_equal(emb[table]["embedding"][0], 0.0)
  assert np.any(emb["word_embeddings"]["embedding"][inputs["input_ids"][0, 1]] != 0)


def test_nlvr2_classifies_the_concatenated_pair():
  cfg = LxmertConfig(**TINY)
  model = lxmert_jax.LxmertForNLVR2(cfg)
  one = random_inputs(4, seed=3)
  pair = dict(input_ids=one["input_ids"][::2], attention_mask=one["attention_mask"][::2],
              visual_feats=one["visual_feats"].reshape(2, 2, *one["visual_feats"].shape[1:]),
              visual_pos=one["visual_pos"].reshape(2, 2, 5, 4))
  params = nn.meta.unbox(init(model, pair))
  out = model.apply({"params": params}, **pair, labels=np.array([0, 1]))
  assert out.logits.shape == (2, 2) and np.isfinite(float(out.loss))
  backbone = lxmert_jax.LxmertModel(cfg)
  flat = dict(input_ids=np.repeat(pair["input_ids"], 2, 0),
              attention_mask=np.repeat(pair["attention_mask"], 2, 0),
              visual_feats=one["visual_feats"], visual_pos=one["visual_pos"])
  pooled = backbone.apply({"params": params["lxmert"]}, **flat).pooled_output
  np.testing.assert_allclose(out.pooled_output, pooled.reshape(2, -1), atol=1e-6)


def test_config_json_round_trip_and_errors(tmp_path):
  cfg = LxmertConfig(**dict(TINY, dtype="bfloat16"))
  cfg.to_json_file(tmp_path / "config.json")
  assert LxmertConfig.from_json_file(tmp_path / "config.json") == cfg
  with pytest.raises(ValueError, match="unknown LXMERT config keys"):
    LxmertConfig.from_dict({"hiden_size": 3})
  with pytest.raises(ValueError, match="model_type is 'bert'"):
    LxmertConfig.from_dict({"model_type": "bert"})
  with pytest.raises(ValueError, match="multiple of num_attention_heads"):
    LxmertConfig(hidden_size=30, num_attention_heads=4)
  (tmp_path / "bad.json").write_text("{oops")
  with pytest.raises(ValueError, match="bad.json: not valid JSON"):
    LxmertConfig.from_json_file(tmp_path / "bad.json")


def test_masked_lm_on_gathered_positions_gives_the_same_loss():
  cfg = LxmertConfig(**TINY)
  model = lxmert_jax.LxmertForPreTraining(cfg)
  inputs = random_inputs(3)
  params = init(model, inputs)
  labels = np.full((3, 9), -100)
  labels[0, 2], labels[1, 5], labels[2, 1], labels[2, 7] = 4, 9, 11, 0
  full = model.apply({"params": params}, **inputs, labels=labels)
  positions, gathered, overflow = masked_decoding.gather_masked_positions(labels, 6)
  assert not overflow
  part = model.apply({"params": params}, **inputs, labels=gathered, mlm_positions=positions)
  assert part.prediction_logits.shape == (1, 6, TINY["vocab_size"])
  np.testing.assert_allclose(part.loss_terms["mlm"], full.loss_terms["mlm"], rtol=1e-6)
  full_rows = np.asarray(full.prediction_logits).reshape(27, -1)[[2, 14, 19, 25]]
  np.testing.assert_allclose(part.prediction_logits[0, :4], full_rows, rtol=1e-6, atol=1e-6)
  assert masked_decoding.gather_masked_positions(labels, 3)[2]
  # In three blocks of one example each: block g's positions count within it.
  positions, gathered, overflow = masked_decoding.gather_masked_positions(labels, 2, 3)
  assert not overflow
  np.testing.assert_array_equal(positions, [[2, 0], [5, 0], [1, 7]])
  np.testing.assert_array_equal(gathered, [[4, -100], [9, -100], [11, 0]])
  part = model.apply({"params": params}, **inputs, labels=gathered, mlm_positions=positions)
  assert part.prediction_logits.shape == (3, 2, TINY["vocab_size"])
  np.testing.assert_allclose(part.loss_terms["mlm"], full.loss_terms["mlm"], rtol=1e-6)
  assert masked_decoding.gather_masked_positions(labels, 1, 3)[2]  # Block 2 has two.


def test_feature_decoder_on_gathered_boxes_gives_the_same_loss_and_predictions():
  cfg = LxmertConfig(**TINY)
  model = lxmert_jax.LxmertForPreTraining(cfg)
  inputs = random_inputs(3)
  params = init(model, inputs)
  rng = np.random.default_rng(4)
  targets = rng.normal(size=(3, 5, TINY["visual_feat_dim"])).astype(np.float32)
  mask = np.zeros((3, 5), np.float32)
  mask[0, 1], mask[1, 4], mask[2, 0], mask[2, 3] = 1, 1, 1, 1
  obj = {"obj": (np.zeros((3, 5), np.int32), np.ones((3, 5), np.float32)),
         "attr": (np.zeros((3, 5), np.int32), np.ones((3, 5), np.float32))}
  full = model.apply({"params": params}, **inputs, obj_labels=dict(obj, feat=(targets, mask)))
  positions, gathered, gathered_mask, overflow = masked_decoding.gather_masked_boxes(
      targets, mask, 6)
  assert not overflow
  np.testing.assert_array_equal(positions[0, :4], [1, 9, 10, 13])
  np.testing.assert_array_equal(gathered_mask, [[1, 1, 1, 1, 0, 0]])
  part = model.apply({"params": params}, **inputs, feat_positions=positions,
                     obj_labels=dict(obj, feat=(gathered, gathered_mask)))
  feat = part.visual_prediction["feat"]
  assert feat.shape == (1, 6, TINY["visual_feat_dim"])
  full_rows = np.asarray(full.visual_prediction["feat"]).reshape(15, -1)[[1, 9, 10, 13]]
  np.testing.assert_allclose(feat[0, :4], full_rows, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(part.loss_terms["feat"], full.loss_terms["feat"], rtol=1e-6)
  assert full.loss_terms["feat"] > 0
  np.testing.assert_allclose(part.loss_terms["obj"], full.loss_terms["obj"], rtol=1e-6)
  assert masked_decoding.gather_masked_boxes(targets, mask, 3)[3]


def test_fused_attention_matches_the_reference_without_dropout():
  cfg = LxmertConfig(**TINY)
  inputs = random_inputs(3)
  params = init(lxmert_jax.LxmertForPreTraining(cfg), inputs)
  ref = lxmert_jax.LxmertForPreTraining(cfg).apply({"params": params}, **inputs)
  fused_model = lxmert_jax.LxmertForPreTraining(cfg.replace(attention_implementation="xla"))
  fused = fused_model.apply({"params": params}, **inputs)
  assert max_rel_error(fused.prediction_logits, ref.prediction_logits) < 1e-5
  with pytest.raises(ValueError, match="output_attentions needs"):
    fused_model.apply({"params": params}, **inputs, output_attentions=True)


@pytest.mark.parametrize("seq_len, accepted", [(20, True), (21, False)])
def test_cudnn_attention_passes_cudnns_input_checks(monkeypatch, seq_len, accepted):
  """cuDNN's own shape, dtype and layout checks accept the model's training gradient.

  The checks run while tracing; only the cuDNN version and GPU generation
  probes need a GPU, so they are answered as on an H100 with cuDNN 9.10.
  cuDNN needs even sequence lengths when training with a mask: an odd one is
  refused, which shows the checks are live.
  """
  fused = pytest.importorskip("jax._src.cudnn.fused_attention_stablehlo")
  monkeypatch.setattr(fused, "check_cudnn_version", lambda: 91000)
  monkeypatch.setattr(fused, "check_compute_capability", lambda capability: True)
  cfg = LxmertConfig(**TINY).replace(dtype="bfloat16", attention_implementation="cudnn")
  model = lxmert_jax.LxmertForPreTraining(cfg)
  inputs = random_inputs(2, seq_len=seq_len, num_objects=36)
  assert inputs["attention_mask"].min() == 0  # padded text: the mask is passed

  def loss(params):
    out = model.apply({"params": params}, **inputs, deterministic=False,
                      rngs={"dropout": jax.random.key(1)})
    return out.language_output.astype(jnp.float32).sum()

  params = nn.unbox(jax.eval_shape(lambda: model.init(jax.random.key(0), **inputs))["params"])
  if accepted:
    grads = jax.eval_shape(jax.grad(loss), params)
    assert jax.tree.structure(grads) == jax.tree.structure(params)
  else:
    with pytest.raises(NotImplementedError, match="Unsupported sequence length"):
      jax.eval_shape(jax.grad(loss), params)
