"""`init.mode` lxmert/bert: what reaches each task model, and loading nothing."""

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import pytest

from lxmert_jax.convert import checkpoints
from lxmert_jax.model.config import LxmertConfig
from lxmert_jax.model.encoders import LxmertModel
from lxmert_jax.model.task_models import (LxmertForNLVR2, LxmertForPreTraining,
                                          LxmertForQuestionAnswering)
from lxmert_jax.training import init_weights

MODELS = (LxmertModel, LxmertForPreTraining, LxmertForQuestionAnswering, LxmertForNLVR2)
TINY = LxmertConfig(vocab_size=64, hidden_size=32, num_attention_heads=4, intermediate_size=64,
                    l_layers=2, x_layers=1, r_layers=1, visual_feat_dim=16, num_qa_labels=8,
                    num_object_labels=12, num_attr_labels=8, max_position_embeddings=16)


@pytest.fixture(scope="module", autouse=True)
def _fast_compile():
  """Initialisation is dominated by XLA compile time; optimisations do not matter."""
  previous = jax.config.read("jax_disable_most_optimizations")
  jax.config.update("jax_disable_most_optimizations", True)
  yield
  jax.config.update("jax_disable_most_optimizations", previous)


def _init(mode, path, model):
  return init_weights.initial_params(ml_collections.ConfigDict(dict(mode=mode, path=str(path))),
                                     model, model.config, jax.random.key(0))


def _saved(path, cls, config=TINY, seed=1):
  """Saves a randomly initialised `cls` as our checkpoint; returns its params."""
  model = cls(config)
  params = nn.unbox(model.init(jax.random.key(seed), **checkpoints.init_inputs(model))["params"])
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
