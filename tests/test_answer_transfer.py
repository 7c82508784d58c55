"""The original's answer-head transfer at fine-tuning init (`load_lxmert_qa`).

Row r of the fine-tuning head must be the checkpoint's row of the answer
`convert_ans(label2ans[r])`, or zeros; the hidden layers are copied; NLVR2
loads the encoder only; a head whose rows cannot be named is an error.
"""

import json

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import pytest

from lxmert_jax.convert import checkpoints
from lxmert_jax.model import task_models
from lxmert_jax.model.config import LxmertConfig
from lxmert_jax.model.task_models import (LxmertForNLVR2, LxmertForPreTraining,
                                          LxmertForQuestionAnswering)
from lxmert_jax.training import init_weights

pytestmark = pytest.mark.usefixtures("fast_compile")

TINY = dict(vocab_size=64, hidden_size=32, num_attention_heads=4, intermediate_size=64,
            l_layers=1, x_layers=1, r_layers=1, visual_feat_dim=16, num_object_labels=12,
            num_attr_labels=8, max_position_embeddings=16)
# The checkpoint's (pre-training) answer table, already normalised as the original's is.
TABLE = ["yes", "no", "2", "red", "cube", "man"]
# The fine-tuning vocabulary: raw spellings that convert_ans maps into the table, and
# two answers it does not have.
TASK = ["two", "blue", "the cube.", "yes", "a man", "purple"]
EXPECTED_ROW = [2, None, 4, 0, 5, None]


def _params(model, seed):
  return nn.unbox(model.init(jax.random.key(seed), **task_models.init_inputs(model))["params"])


def _init(path, model, task_answers=None, **fields):
  """`initial_params` for init.mode=lxmert; `fields` override the init block."""
  init = ml_collections.ConfigDict(dict(mode="lxmert", path=str(path), step="best",
                                        answers="", encoder_only=False))
  init.update(fields)
  return init_weights.initial_params(init, model, model.config, jax.random.key(0),
                                     answers=task_answers)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
  """A saved pre-training model whose answer head has one row per TABLE answer."""
  path = tmp_path_factory.mktemp("pretrained") / "ckpt"
  model = LxmertForPreTraining(LxmertConfig(**TINY, num_qa_labels=len(TABLE)))
  params = _params(model, seed=1)
  checkpoints.save_model(path, model, params, answers=TABLE)
  return path, params


def _check_rows(params, source, report):
  head, src = params["answer_head"], source["answer_head"]
  for name in ("logit_fc_0", "logit_fc_2"):
    for leaf, value in head[name].items():
      np.testing.assert_array_equal(value, src[name][leaf])
  kernel, bias = head["logit_fc_3"]["kernel"], head["logit_fc_3"]["bias"]
  for label, row in enumerate(EXPECTED_ROW):
    if row is None:
      assert not kernel[:, label].any() and bias[label] == 0
    else:
      np.testing.assert_array_equal(kernel[:, label], src["logit_fc_3"]["kernel"][:, row])
      assert bias[label] == src["logit_fc_3"]["bias"][row]
  assert "answer head: 4 of 6 answers transferred" in report.summary()
  assert "2 zeroed" in report.summary()


def test_answers_take_their_rows_by_normalised_string(pretrained):
  path, source = pretrained
  model = LxmertForQuestionAnswering(LxmertConfig(**TINY, num_qa_labels=len(TASK)))
  params, report = _init(path, model, TASK)
  _check_rows(params, source, report)
  np.testing.assert_array_equal(
      params["lxmert"]["embeddings"]["word_embeddings"]["embedding"],
      source["lxmert"]["embeddings"]["word_embeddings"]["embedding"])


def test_transfer_from_a_transformers_checkpoint_with_the_original_answer_table(tmp_path):
  transformers = pytest.importorskip("transformers")
  torch = pytest.importorskip("torch")
  torch.manual_seed(0)
  hf = transformers.LxmertForPreTraining(transformers.LxmertConfig(
      vocab_size=64, hidden_size=32, num_attention_heads=4, intermediate_size=64,
      l_layers=1, x_layers=1, r_layers=1, visual_feat_dim=16, visual_pos_dim=4,
      num_qa_labels=len(TABLE), num_object_labels=12, num_attr_labels=8,
      max_position_embeddings=16))
  hf.save_pretrained(tmp_path / "hf")
  state = {k: v.detach().numpy() for k, v in hf.state_dict().items()}
  # The original's all_ans.json format: objects with `ans` (and the QA sets).
  table = tmp_path / "all_ans.json"
  table.write_text(json.dumps([{"ans": a, "dsets": ["vqa"]} for a in TABLE]))
  model = LxmertForQuestionAnswering(LxmertConfig(**TINY, num_qa_labels=len(TASK)))
  params, report = _init(tmp_path / "hf", model, TASK, answers=str(table))
  source = {"answer_head": {
      "logit_fc_0": {"kernel": state["answer_head.logit_fc.0.weight"].T,
                     "bias": state["answer_head.logit_fc.0.bias"]},
      "logit_fc_2": {"scale": state["answer_head.logit_fc.2.weight"],
                     "bias": state["answer_head.logit_fc.2.bias"]},
      "logit_fc_3": {"kernel": state["answer_head.logit_fc.3.weight"].T,
                     "bias": state["answer_head.logit_fc.3.bias"]}}}
  _check_rows(params, source, report)


def test_a_head_whose_rows_have_no_answers_is_refused(tmp_path):
  model = LxmertForPreTraining(LxmertConfig(**TINY, num_qa_labels=len(TABLE)))
  checkpoints.save_model(tmp_path / "ckpt", model, _params(model, seed=1))  # No answers.json.
  task_model = LxmertForQuestionAnswering(LxmertConfig(**TINY, num_qa_labels=len(TASK) + 1))
  with pytest.raises(ValueError, match="no answer table.*init.answers"):
    _init(tmp_path / "ckpt", task_model, TASK + ["extra"])


def test_nlvr2_loads_the_encoder_only(pretrained):
  path, source = pretrained
  model = LxmertForNLVR2(LxmertConfig(**TINY, num_qa_labels=2))
  fresh = _params(model, seed=0)
  params, report = _init(path, model, encoder_only=True)
  # The pre-training head's LayerNorm has the NLVR2 head's shape, and still is not loaded.
  np.testing.assert_array_equal(params["answer_head"]["logit_fc_2"]["scale"],
                                fresh["answer_head"]["logit_fc_2"]["scale"])
  assert not any(p.startswith("answer_head") for p in report.loaded)
  np.testing.assert_array_equal(params["lxmert"]["pooler"]["dense"]["kernel"],
                                source["lxmert"]["pooler"]["dense"]["kernel"])
