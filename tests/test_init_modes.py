"""Where a run's initial weights come from: scratch, a BERT checkpoint, an LXMERT checkpoint."""

import jax
import ml_collections
import numpy as np
import pytest

from lxmert_jax.convert import checkpoints
from lxmert_jax.training import init_weights
from lxmert_jax.model.config import LxmertConfig
from lxmert_jax.model.task_models import LxmertForPreTraining

@pytest.fixture(scope="module", autouse=True)
def _fast_compile():
  """These tests are dominated by XLA compile time; optimisations do not matter."""
  previous = jax.config.read("jax_disable_most_optimizations")
  jax.config.update("jax_disable_most_optimizations", True)
  yield
  jax.config.update("jax_disable_most_optimizations", previous)


TINY = LxmertConfig(vocab_size=64, hidden_size=32, num_attention_heads=4, intermediate_size=64,
                    l_layers=2, x_layers=1, r_layers=1, visual_feat_dim=16, num_qa_labels=8,
                    num_object_labels=12, num_attr_labels=8, max_position_embeddings=16,
                    hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


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
