"""Conversion: transformers and original snapshots <-> lxmert_jax, and its errors."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import lxmert_jax  # pylint: disable=wrong-import-position
from lxmert_jax import convert  # pylint: disable=wrong-import-position
from lxmert_jax.convert import checkpoints
from model_utils import TINY, random_inputs  # pylint: disable=wrong-import-position
from safetensors.numpy import load_file  # pylint: disable=wrong-import-position


def save_hf(tmp_path, arch="LxmertForPreTraining", seed=0, **overrides):
  torch.manual_seed(seed)
  hf = getattr(transformers, arch)(transformers.LxmertConfig(**dict(TINY, **overrides)))
  path = tmp_path / f"hf-{arch}"
  hf.save_pretrained(path)
  return hf, path


@pytest.mark.parametrize("arch", ["LxmertForPreTraining", "LxmertForQuestionAnswering",
                                  "LxmertModel"])
def test_round_trip_is_bit_exact_key_for_key(tmp_path, arch):
  _, hf_dir = save_hf(tmp_path, arch)
  convert.main(["hf-to-jax", str(hf_dir), str(tmp_path / "ours")])
  convert.main(["jax-to-hf", str(tmp_path / "ours"), str(tmp_path / "back")])
  before = load_file(hf_dir / "model.safetensors")
  after = load_file(tmp_path / "back" / "model.safetensors")
  assert sorted(before) == sorted(after)
  for key in before:
    assert before[key].dtype == after[key].dtype, key
    np.testing.assert_array_equal(before[key], after[key], err_msg=key)
  _, info = getattr(transformers, arch).from_pretrained(tmp_path / "back",
                                                        output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"]
  assert not info["mismatched_keys"]


def test_from_pretrained_hf_follows_architectures_and_accepts_numpy(tmp_path):
  hf, hf_dir = save_hf(tmp_path, "LxmertForQuestionAnswering", num_qa_labels=4)
  model, params = lxmert_jax.from_pretrained_hf(hf_dir)
  assert isinstance(model, lxmert_jax.LxmertForQuestionAnswering)
  inputs = random_inputs(2)
  out = model.apply({"params": params}, **inputs, deterministic=True,
                    output_hidden_states=True)
  assert out.question_answering_score.shape == (2, 4)
  assert len(out.language_hidden_states) == TINY["l_layers"] + TINY["x_layers"]
  with torch.no_grad():
    ref = hf.eval()(**{k: torch.tensor(v) for k, v in inputs.items()})
  np.testing.assert_allclose(out.question_answering_score,
                             ref.question_answering_score.numpy(), atol=1e-5)


def test_our_checkpoint_reloads_identically(tmp_path):
  _, hf_dir = save_hf(tmp_path)
  model, params = lxmert_jax.from_pretrained_hf(hf_dir, dtype="bfloat16")
  lxmert_jax.save_model(tmp_path / "ckpt", model, params)
  loaded, loaded_params = lxmert_jax.load_model(tmp_path / "ckpt")
  assert loaded.config == model.config and loaded.config.dtype == "bfloat16"
  jax.tree_util.tree_map(np.testing.assert_array_equal, params,
                         jax.tree_util.tree_map(np.asarray, loaded_params))


def test_pytorch_bin_directory_is_read(tmp_path):
  hf, _ = save_hf(tmp_path)
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  torch.save(hf.state_dict(), bin_dir / "pytorch_model.bin")  # includes the tied decoder
  hf.config.to_json_file(bin_dir / "config.json")
  _, params = lxmert_jax.from_pretrained_hf(bin_dir)
  np.testing.assert_array_equal(
      params["lxmert"]["embeddings"]["word_embeddings"]["embedding"],
      hf.state_dict()["lxmert.embeddings.word_embeddings.weight"].numpy())


def _original_keys(state, encoder_prefix, head_prefix=None):
  out = {}
  for key, value in state.items():
    if key == convert.TIED_DECODER_KEY:
      continue
    if key.startswith("lxmert."):
      key = encoder_prefix + key[len("lxmert."):]
    elif head_prefix and key.startswith("answer_head.logit_fc."):
      key = head_prefix + key[len("answer_head.logit_fc."):]
    out[key] = torch.tensor(value)
  return out


@pytest.mark.parametrize("prefix", ["module.bert.", "bert."])
def test_original_pretraining_snapshot(tmp_path, prefix):
  hf, _ = save_hf(tmp_path)
  state = {k: v.numpy() for k, v in hf.state_dict().items()}
  original = _original_keys(state, prefix)
  if prefix.startswith("module."):
    original = {("module." + k if not k.startswith("module.") else k): v
                for k, v in original.items()}
  torch.save(original, tmp_path / "Epoch20_LXRT.pth")
  convert.main(["original-to-jax", str(tmp_path / "Epoch20_LXRT.pth"), str(tmp_path / "ours"),
                "--num-attention-heads", str(TINY["num_attention_heads"])])
  model, params = lxmert_jax.load_model(tmp_path / "ours")
  assert isinstance(model, lxmert_jax.LxmertForPreTraining)
  assert model.config.l_layers == TINY["l_layers"] and model.config.x_layers == TINY["x_layers"]
  assert abs(model.config.visual_loss_normalizer - 1 / 0.15) < 1e-9
  expected = convert.params_to_state_dict(params)
  for key, value in expected.items():
    np.testing.assert_array_equal(value, state[key], err_msg=key)


def test_original_finetuned_vqa_and_nlvr2_snapshots(tmp_path):
  hf, _ = save_hf(tmp_path, "LxmertForQuestionAnswering", num_qa_labels=6)
  state = {k: v.numpy() for k, v in hf.state_dict().items()}
  torch.save(_original_keys(state, "lxrt_encoder.model.bert.", "logit_fc."),
             tmp_path / "BEST.pth")
  model, params = lxmert_jax.from_original(tmp_path / "BEST.pth", TINY["num_attention_heads"])
  assert isinstance(model, lxmert_jax.LxmertForQuestionAnswering)
  assert model.config.num_qa_labels == 6
  np.testing.assert_array_equal(params["answer_head"]["logit_fc_3"]["kernel"],
                                state["answer_head.logit_fc.3.weight"].T)

  d = TINY["hidden_size"]
  rng = np.random.default_rng(0)
  nlvr = _original_keys({k: v for k, v in state.items() if k.startswith("lxmert.")},
                        "lxrt_encoder.model.bert.")
  for name, shape in (("0.weight", (2 * d, 2 * d)), ("0.bias", (2 * d,)),
                      ("2.weight", (2 * d,)), ("2.bias", (2 * d,)),
                      ("3.weight", (2, 2 * d)), ("3.bias", (2,))):
    nlvr["logit_fc." + name] = torch.tensor(rng.normal(size=shape).astype(np.float32))
  torch.save(nlvr, tmp_path / "NLVR2_BEST.pth")
  model, params = lxmert_jax.from_original(tmp_path / "NLVR2_BEST.pth",
                                           TINY["num_attention_heads"])
  assert isinstance(model, lxmert_jax.LxmertForNLVR2)
  with pytest.raises(convert.ConversionError, match="no NLVR2 model"):
    lxmert_jax.save_pretrained_hf(model.config, params, tmp_path / "nlvr2-hf")


def test_shape_mismatch_names_key_and_both_shapes_and_writes_nothing(tmp_path):
  _, hf_dir = save_hf(tmp_path)
  state = load_file(hf_dir / "model.safetensors")
  from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel
  key = "lxmert.encoder.layer.0.intermediate.dense.weight"
  state[key] = np.zeros((5, TINY["hidden_size"]), np.float32)
  save_file(state, hf_dir / "model.safetensors")
  out = tmp_path / "out"
  with pytest.raises(convert.ConversionError) as err:
    convert.main(["hf-to-jax", str(hf_dir), str(out)])
  message = str(err.value)
  assert key in message and "(5, 32)" in message and "(48, 32)" in message
  assert not out.exists()
  assert [p for p in os.listdir(tmp_path) if p.startswith(".tmp")] == []


def test_missing_and_unexpected_keys_are_listed(tmp_path):
  _, hf_dir = save_hf(tmp_path)
  state = load_file(hf_dir / "model.safetensors")
  state.pop("lxmert.pooler.dense.bias")
  state["lxmert.extra.weight"] = np.zeros(3, np.float32)
  model = lxmert_jax.LxmertForPreTraining(lxmert_jax.LxmertConfig(**TINY))
  with pytest.raises(convert.ConversionError) as err:
    convert.state_dict_to_params(state, model, source="ckpt")
  assert "missing keys (1): ['lxmert.pooler.dense.bias']" in str(err.value)
  assert "unexpected keys (1): ['lxmert.extra.weight']" in str(err.value)


def test_wrong_model_type_is_refused(tmp_path):
  _, hf_dir = save_hf(tmp_path)
  config = json.loads((hf_dir / "config.json").read_text())
  config["model_type"] = "bert"
  (hf_dir / "config.json").write_text(json.dumps(config))
  with pytest.raises(convert.ConversionError, match="model_type is 'bert'"):
    lxmert_jax.from_pretrained_hf(hf_dir)
  config["model_type"] = "lxmert"
  config["architectures"] = ["BertForMaskedLM"]
  (hf_dir / "config.json").write_text(json.dumps(config))
  with pytest.raises(convert.ConversionError, match="BertForMaskedLM"):
    lxmert_jax.from_pretrained_hf(hf_dir)


def test_untied_decoder_is_refused(tmp_path):
  hf, _ = save_hf(tmp_path)
  state = {k: v.numpy().copy() for k, v in hf.state_dict().items()}
  state[convert.TIED_DECODER_KEY][0, 0] += 1.0
  model = lxmert_jax.LxmertForPreTraining(lxmert_jax.LxmertConfig(**TINY))
  with pytest.raises(convert.ConversionError, match="differs"):
    convert.state_dict_to_params(state, model)


def test_wrong_params_for_architecture_are_refused(tmp_path):
  model = lxmert_jax.LxmertModel(lxmert_jax.LxmertConfig(**TINY))
  params = jax.tree_util.tree_map(np.zeros_like, checkpoints.abstract_params(model))
  with pytest.raises(convert.ConversionError, match="do not fit LxmertForPreTraining"):
    lxmert_jax.save_pretrained_hf(model.config, params, tmp_path / "x",
                                  architecture="LxmertForPreTraining")
  assert not (tmp_path / "x").exists()
