"""Where a run's initial weights come from (`init.mode` scratch, bert, lxmert): what reaches
each task model, what is reported, and loading nothing."""

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import pytest

from lxmert_jax.convert import checkpoints
from lxmert_jax.model.config import LxmertConfig
from lxmert_jax.model.encoders import LxmertModel
from lxmert_jax.model import task_models
from lxmert_jax.model.task_models import (LxmertForNLVR2, LxmertForPreTraining,
                                          LxmertForQuestionAnswering)
from lxmert_jax.training import init_weights

MODELS = (LxmertModel, LxmertForPreTraining, LxmertForQuestionAnswering, LxmertForNLVR2)
TINY = LxmertConfig(vocab_size=64, hidden_size=32, num_attention_heads=4, intermediate_size=64,
                    l_layers=2, x_layers=1, r_layers=1, visual_feat_dim=16, num_qa_labels=8,
                    num_object_labels=12, num_attr_labels=8, max_position_embeddings=16)


pytestmark = pytest.mark.usefixtures("fast_compile")


def _init(mode, path, model):
  return init_weights.initial_params(ml_collections.ConfigDict(dict(mode=mode, path=str(path))),
                                     model, model.config, jax.random.key(0))


def _saved(path, cls, config=TINY, seed=1):
  """Saves a randomly initialised `cls` as our checkpoint; returns its params."""
  model = cls(config)
  params = nn.unbox(model.init(jax.random.key(seed), **task_models.init_inputs(model))["params"])
  checkpoints.save_model(path, model, params)
  return params


def _encoder(params):
  return params.get("lxmert", params)


@pytest.mark.parametrize("with_heads", [False, True])
def test_bert_init_loads_the_language_encoder_of_a_bare_model(tmp_path, with_heads):
  transformers = pytest.importorskip("transformers")
  torch = pytest.importorskip("torch")
  torch.manual_seed(0)
  cls = transformers.BertForPreTraining if with_heads else transformers.BertModel
  bert = cls(transformers.BertConfig(
      vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
      intermediate_size=64, max_position_embeddings=16, type_vocab_size=2))
  bert.save_pretrained(tmp_path)
  state = {k: v.detach().numpy() for k, v in bert.state_dict().items()}
  prefix = "bert." if with_heads else ""

  params, report = _init("bert", tmp_path, LxmertModel(TINY))
  np.testing.assert_array_equal(params["embeddings"]["word_embeddings"]["embedding"],
                                state[f"{prefix}embeddings.word_embeddings.weight"])
  np.testing.assert_array_equal(
      params["encoder"]["layer_1"]["attention"]["self"]["query"]["kernel"],
      state[f"{prefix}encoder.layer.1.attention.self.query.weight"].T)
  np.testing.assert_array_equal(params["pooler"]["dense"]["kernel"],
                                state[f"{prefix}pooler.dense.weight"].T)
  assert "encoder/layer_1/output/LayerNorm/scale" in report.loaded
  assert "encoder/x_layers_0/visual_attention/att/query/kernel" in report.initialised
  assert any(k.startswith("cls.") for k in report.unused) == with_heads


@pytest.mark.parametrize("source_cls, target_cls", [
    (LxmertModel, LxmertForQuestionAnswering), (LxmertModel, LxmertForNLVR2),
    (LxmertModel, LxmertForPreTraining), (LxmertForPreTraining, LxmertModel)])
def test_lxmert_init_moves_the_encoder_between_bare_and_task_models(tmp_path, source_cls,
                                                                    target_cls):
  source = _saved(tmp_path / "ckpt", source_cls)
  params, report = _init("lxmert", tmp_path / "ckpt", target_cls(TINY))
  expected, got = _encoder(source), _encoder(params)
  jax.tree_util.tree_map(np.testing.assert_array_equal, got, jax.tree.map(np.asarray, expected))
  assert len(report.loaded) == len(jax.tree_util.tree_leaves(got))
  if source_cls is LxmertForPreTraining:
    assert "cls/predictions/bias" in report.unused


def test_lxmert_init_reads_a_transformers_encoder_into_a_task_model(tmp_path):
  transformers = pytest.importorskip("transformers")
  pytest.importorskip("torch")
  hf_fields = {f: getattr(TINY, f) for f in (
      "vocab_size", "hidden_size", "num_attention_heads", "intermediate_size", "l_layers",
      "x_layers", "r_layers", "visual_feat_dim", "max_position_embeddings")}
  hf = transformers.LxmertModel(transformers.LxmertConfig(**hf_fields))
  hf.save_pretrained(tmp_path)
  params, report = _init("lxmert", tmp_path, LxmertForQuestionAnswering(TINY))
  np.testing.assert_array_equal(
      params["lxmert"]["pooler"]["dense"]["kernel"],
      hf.state_dict()["pooler.dense.weight"].numpy().T)
  assert report.initialised == sorted(k for k in report.initialised
                                      if k.startswith("answer_head/"))


@pytest.mark.parametrize("cls", MODELS)
def test_loading_nothing_is_an_error(tmp_path, cls):
  other = TINY.replace(hidden_size=16, intermediate_size=24)
  _saved(tmp_path / "narrow", LxmertModel, other)
  with pytest.raises(ValueError) as err:
    _init("lxmert", tmp_path / "narrow", cls(TINY))
  message = str(err.value)
  assert str(tmp_path / "narrow") in message and "init.mode='lxmert'" in message
  assert cls.__name__ in message and "expected" in message


def _params(model, cfg=TINY, seed=0):
  from lxmert_jax.model.encoders import dummy_inputs  # pylint: disable=import-outside-toplevel
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  return nn.unbox(model.init(jax.random.key(seed), **dummy_inputs(cfg, 1, 4, 2))["params"])


# --- Initialisation options ---------------------------------------------------


def test_scratch_init_returns_nothing_to_load():
  cfg = ml_collections.ConfigDict(dict(mode="scratch", path=""))
  assert init_weights.initial_params(cfg, LxmertForPreTraining(TINY), TINY,
                                     jax.random.key(0)) == (None, None)


def test_unknown_init_mode_and_missing_path_are_errors(tmp_path):
  model = LxmertForPreTraining(TINY)
  with pytest.raises(ValueError, match="init.mode 'imagenet'"):
    init_weights.initial_params(ml_collections.ConfigDict(dict(mode="imagenet", path="")),
                                model, TINY, jax.random.key(0))
  with pytest.raises(FileNotFoundError, match="init.path"):
    init_weights.initial_params(
        ml_collections.ConfigDict(dict(mode="bert", path=str(tmp_path / "nope"))),
        model, TINY, jax.random.key(0))


@pytest.mark.parametrize("with_heads", [False, True])
def test_bert_init_loads_the_language_encoder(tmp_path, with_heads):
  transformers = pytest.importorskip("transformers")
  torch = pytest.importorskip("torch")
  bert_config = transformers.BertConfig(
      vocab_size=64, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
      intermediate_size=64, max_position_embeddings=16, type_vocab_size=2)
  torch.manual_seed(0)
  cls = transformers.BertForPreTraining if with_heads else transformers.BertModel
  bert = cls(bert_config)
  bert.save_pretrained(tmp_path)
  state = {k: v.detach().numpy() for k, v in bert.state_dict().items()}
  prefix = "bert." if with_heads else ""

  model = LxmertForPreTraining(TINY)
  params, report = init_weights.initial_params(
      ml_collections.ConfigDict(dict(mode="bert", path=str(tmp_path))), model, TINY,
      jax.random.key(0))
  emb = params["lxmert"]["embeddings"]
  np.testing.assert_array_equal(emb["word_embeddings"]["embedding"],
                                state[f"{prefix}embeddings.word_embeddings.weight"])
  np.testing.assert_array_equal(emb["LayerNorm"]["scale"],
                                state[f"{prefix}embeddings.LayerNorm.weight"])
  layer1 = params["lxmert"]["encoder"]["layer_1"]
  np.testing.assert_array_equal(
      layer1["attention"]["self"]["query"]["kernel"],
      state[f"{prefix}encoder.layer.1.attention.self.query.weight"].T)
  np.testing.assert_array_equal(layer1["output"]["dense"]["bias"],
                                state[f"{prefix}encoder.layer.1.output.dense.bias"])
  np.testing.assert_array_equal(params["lxmert"]["pooler"]["dense"]["kernel"],
                                state[f"{prefix}pooler.dense.weight"].T)
  # TINY has 2 language layers: BERT's third is unused; X/R layers stay fresh.
  assert any("encoder.layer.2." in k for k in report.unused)
  assert "lxmert/encoder/x_layers_0/visual_attention/att/query/kernel" in report.initialised
  assert "lxmert/encoder/layer_1/attention/self/query/kernel" in report.loaded
  heads_loaded = "cls/predictions/transform/dense/kernel" in report.loaded
  assert heads_loaded == with_heads
  if with_heads:
    np.testing.assert_array_equal(params["cls"]["predictions"]["bias"],
                                  state["cls.predictions.bias"])
  fresh = _params(model, seed=0)
  np.testing.assert_allclose(params["answer_head"]["logit_fc_0"]["kernel"],
                             fresh["answer_head"]["logit_fc_0"]["kernel"], rtol=1e-6)
  assert "loaded" in str(report)


def test_bert_init_rejects_a_bert_of_another_width(tmp_path):
  transformers = pytest.importorskip("transformers")
  pytest.importorskip("torch")
  transformers.BertModel(transformers.BertConfig(
      vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
      intermediate_size=32, max_position_embeddings=16)).save_pretrained(tmp_path)
  with pytest.raises(ValueError, match="shape mismatches"):
    init_weights.initial_params(
        ml_collections.ConfigDict(dict(mode="bert", path=str(tmp_path))),
        LxmertForPreTraining(TINY), TINY, jax.random.key(0))


def test_lxmert_init_loads_matching_params_and_reports_the_rest(tmp_path):
  source_cfg = TINY.replace(num_qa_labels=5)
  source = LxmertForPreTraining(source_cfg)
  source_params = _params(source, source_cfg, seed=1)
  checkpoints.save_model(tmp_path / "ckpt", source, source_params)
  model = LxmertForPreTraining(TINY)
  params, report = init_weights.initial_params(
      ml_collections.ConfigDict(dict(mode="lxmert", path=str(tmp_path / "ckpt"))), model, TINY,
      jax.random.key(0))
  np.testing.assert_array_equal(
      params["lxmert"]["encoder"]["x_layers_0"]["lang_output"]["dense"]["kernel"],
      source_params["lxmert"]["encoder"]["x_layers_0"]["lang_output"]["dense"]["kernel"])
  assert report.initialised == ["answer_head/logit_fc_3/bias", "answer_head/logit_fc_3/kernel"]
  assert any("(64, 5)" in note for note in report.notes)
