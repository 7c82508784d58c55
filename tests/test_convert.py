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


def _cli_error(capsys, argv):
  """Runs the command line expecting failure; returns its stderr."""
  capsys.readouterr()
  with pytest.raises(SystemExit) as exit_info:
    convert.main(argv)
  assert exit_info.value.code == 1
  captured = capsys.readouterr()
  assert "Traceback" not in captured.err and captured.out == ""
  assert len(captured.err.strip().splitlines()) == 1, captured.err
  return captured.err


def _nothing_written(tmp_path, out):
  assert not out.exists()
  assert [p for p in os.listdir(tmp_path) if p.startswith(".tmp")] == []


def test_shape_mismatch_names_key_and_both_shapes_and_writes_nothing(tmp_path, capsys):
  _, hf_dir = save_hf(tmp_path)
  state = load_file(hf_dir / "model.safetensors")
  from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel
  key = "lxmert.encoder.layer.0.intermediate.dense.weight"
  state[key] = np.zeros((5, TINY["hidden_size"]), np.float32)
  save_file(state, hf_dir / "model.safetensors")
  out = tmp_path / "out"
  message = _cli_error(capsys, ["hf-to-jax", str(hf_dir), str(out)])
  assert key in message and "lxmert/encoder/layer_0/intermediate/dense/kernel" in message
  assert "(5, 32)" in message and "(48, 32)" in message
  _nothing_written(tmp_path, out)


def _original_snapshot(tmp_path, **replace):
  hf, _ = save_hf(tmp_path)
  state = {k: v.numpy() for k, v in hf.state_dict().items()}
  original = {"module." + k: v for k, v in _original_keys(state, "bert.").items()}
  original.update({k: torch.tensor(v) for k, v in replace.items()})
  path = tmp_path / "Epoch20_LXRT.pth"
  torch.save(original, path)
  return path


def test_original_snapshot_mismatch_names_the_snapshot_key(tmp_path, capsys):
  key = "module.bert.encoder.layer.1.intermediate.dense.weight"
  path = _original_snapshot(tmp_path, **{key: np.zeros((5, TINY["hidden_size"]), np.float32),
                                         "module.bert.extra.weight": np.zeros(3, np.float32)})
  out = tmp_path / "out"
  message = _cli_error(capsys, ["original-to-jax", str(path), str(out),
                                "--num-attention-heads", str(TINY["num_attention_heads"])])
  assert str(path) in message and key in message
  assert "lxmert/encoder/layer_1/intermediate/dense/kernel" in message
  assert "(5, 32)" in message and "(48, 32)" in message
  assert "unexpected keys (1): ['module.bert.extra.weight']" in message
  _nothing_written(tmp_path, out)


def test_missing_keys_on_the_command_line(tmp_path, capsys):
  _, hf_dir = save_hf(tmp_path)
  state = load_file(hf_dir / "model.safetensors")
  from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel
  state.pop("lxmert.pooler.dense.bias")
  save_file(state, hf_dir / "model.safetensors")
  out = tmp_path / "out"
  message = _cli_error(capsys, ["hf-to-jax", str(hf_dir), str(out)])
  assert "missing keys (1): ['lxmert.pooler.dense.bias']" in message
  _nothing_written(tmp_path, out)


def test_unreadable_inputs_are_one_line_errors(tmp_path, capsys):
  out = tmp_path / "out"
  missing = tmp_path / "nowhere"
  assert "no such directory" in _cli_error(capsys, ["hf-to-jax", str(missing), str(out)])
  assert "no such directory" in _cli_error(capsys, ["jax-to-hf", str(missing), str(out)])
  assert "no such file" in _cli_error(capsys, ["original-to-jax", str(missing / "a.pth"),
                                               str(out)])
  _, hf_dir = save_hf(tmp_path)
  (hf_dir / "config.json").write_text("{not json")
  message = _cli_error(capsys, ["hf-to-jax", str(hf_dir), str(out)])
  assert str(hf_dir / "config.json") in message and "not valid JSON" in message
  (hf_dir / "config.json").write_text(json.dumps(dict(model_type="lxmert", hidden_size=30)))
  message = _cli_error(capsys, ["hf-to-jax", str(hf_dir), str(out)])
  assert str(hf_dir / "config.json") in message and "num_attention_heads" in message
  garbage = tmp_path / "garbage.pth"
  garbage.write_bytes(b"not a pickle")
  assert "not a readable PyTorch file" in _cli_error(capsys, ["original-to-jax", str(garbage),
                                                              str(out)])
  ckpt = tmp_path / "ckpt"
  ckpt.mkdir()
  (ckpt / "config.json").write_text("[1, 2")
  message = _cli_error(capsys, ["jax-to-hf", str(ckpt), str(out)])
  assert str(ckpt / "config.json") in message and "not valid JSON" in message
  _nothing_written(tmp_path, out)


def test_module_entry_point_reports_without_traceback(tmp_path):
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  result = subprocess.run(
      [sys.executable, "-m", "lxmert_jax.convert", "hf-to-jax", str(tmp_path / "nowhere"),
       str(tmp_path / "out")], capture_output=True, text=True, check=False,
      env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert result.returncode == 1
  assert "Traceback" not in result.stderr and "no such directory" in result.stderr


@pytest.mark.parametrize("name", ["ckpt[1]", "ckpt]", "run[0]/ckpt"])
def test_bracketed_output_path_is_refused_before_writing(tmp_path, capsys, name):
  model = lxmert_jax.LxmertModel(lxmert_jax.LxmertConfig(**TINY))
  params = jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype),
                                  checkpoints.abstract_params(model))
  out = tmp_path / name
  with pytest.raises(convert.ConversionError, match=r"'\[' or '\]'"):
    lxmert_jax.save_model(out, model, params)
  assert os.listdir(tmp_path) == []
  _, hf_dir = save_hf(tmp_path, "LxmertModel")
  message = _cli_error(capsys, ["hf-to-jax", str(hf_dir), str(out)])
  assert str(out) in message and "'[' or ']'" in message
  assert sorted(os.listdir(tmp_path)) == [hf_dir.name]


def test_bracketed_transformers_output_path_is_written(tmp_path):
  _, hf_dir = save_hf(tmp_path, "LxmertModel")
  convert.main(["hf-to-jax", str(hf_dir), str(tmp_path / "ours")])
  convert.main(["jax-to-hf", str(tmp_path / "ours"), str(tmp_path / "back[1]")])
  model, _ = lxmert_jax.from_pretrained_hf(tmp_path / "back[1]")
  assert isinstance(model, lxmert_jax.LxmertModel)


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


def test_answer_vocabulary_travels_with_the_checkpoint(tmp_path, capsys):
  """--answers stores answers.json (all_ans.json format accepted); jax-to-hf copies it."""
  _, hf_dir = save_hf(tmp_path)
  answers = [f"answer {i}" for i in range(TINY["num_qa_labels"])]
  table = tmp_path / "all_ans.json"
  table.write_text(json.dumps([{"ans": a, "dsets": ["vqa"]} for a in answers]))
  out = tmp_path / "ours"
  convert.main(["hf-to-jax", str(hf_dir), str(out), "--answers", str(table)])
  assert checkpoints.load_answers(out) == answers
  convert.main(["jax-to-hf", str(out), str(tmp_path / "back")])
  assert json.loads((tmp_path / "back" / "answers.json").read_text()) == answers
  # An answer list that does not fit the head is refused before anything is written.
  table.write_text(json.dumps(answers[:-1]))
  message = _cli_error(capsys, ["hf-to-jax", str(hf_dir), str(tmp_path / "bad"),
                                "--answers", str(table)])
  assert f"{len(answers) - 1} answers for an answer head of {len(answers)} rows" in message
  _nothing_written(tmp_path, tmp_path / "bad")
