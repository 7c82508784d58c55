"""Attention maps: the model's own probabilities, drawn, and the command that writes them.

The vision-to-language direction, which transformers does not return, is
checked against a softmax computed here from the cross-attention layer's own
query and key projections; transformers parity of the other kinds is
`test_parity_torch.py`'s. Models are tiny and saved with `save_model`; the
`.npz` files are written as bottom-up-attention.pytorch's `save_roi_features`
writes them.
"""

import math
import os

import jax
import matplotlib.image
import matplotlib.patches
import numpy as np
import pytest

from lxmert_jax import attention_maps as cli
from lxmert_jax.convert import checkpoints
from lxmert_jax.data import tokenization
from lxmert_jax.inference import attention_maps
from lxmert_jax.inference import saved_models
from lxmert_jax.inference.predictor import InputEncoder
from lxmert_jax.model import task_models
from lxmert_jax.model.config import LxmertConfig

pytestmark = pytest.mark.usefixtures("fast_compile")

F = 16
ANSWERS = ["yes", "no", "red", "two"]
QUESTION = "what color is the cube?"
# A wide init, so that attention is far from uniform and box ranks are distinct.
CONFIG = dict(vocab_size=30522, hidden_size=32, num_attention_heads=4, intermediate_size=48,
              l_layers=2, x_layers=2, r_layers=1, visual_feat_dim=F,
              num_qa_labels=len(ANSWERS), max_position_embeddings=32, initializer_range=0.2)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _save(directory, model, seed=0, answers=None):
  params = model.init(jax.random.key(seed), **task_models.init_inputs(model))["params"]
  checkpoints.save_model(directory, model, params, answers=answers)
  return directory


@pytest.fixture(scope="module")
def qa_dir(tmp_path_factory):
  model = task_models.LxmertForQuestionAnswering(LxmertConfig(**CONFIG))
  return _save(str(tmp_path_factory.mktemp("qa") / "ckpt"), model, answers=ANSWERS)


def _image(rng, n):
  """(features, pixel boxes, (height, width)) as the extractor yields them."""
  h, w = int(rng.integers(200, 400)), int(rng.integers(200, 500))
  x1, y1 = rng.uniform(0, w / 2, n), rng.uniform(0, h / 2, n)
  boxes = np.stack([x1, y1, rng.uniform(x1 + 1, w), rng.uniform(y1 + 1, h)], 1)
  return rng.uniform(0, 4, (n, F)).astype(np.float32), boxes.astype(np.float32), (h, w)


def _write_npz(path, feats, boxes, size):
  info = {"image_h": size[0], "image_w": size[1], "num_boxes": len(boxes)}
  np.savez_compressed(path, x=feats, bbox=boxes, num_bbox=len(boxes), image_h=size[0],
                      image_w=size[1], info=info)
  return path


@pytest.fixture(scope="module")
def example(qa_dir):
  """(saved model, one example's inputs: 4 real boxes of 6 slots, size, maps)."""
  saved = saved_models.load_saved_model(qa_dir)
  encoder = InputEncoder.for_saved_model(saved)
  rng = np.random.default_rng(0)
  (f6, b6, s6), (f4, b4, s4) = _image(rng, 6), _image(rng, 4)
  # Two images of different box counts: the second comes padded and masked, as
  # the pipeline pads a batch.
  both = encoder.model_inputs([QUESTION, QUESTION], [f6, f4], [b6, b4], image_sizes=[s6, s4])
  inputs = {k: v[1:] for k, v in both.items()}
  maps = attention_maps.attention(saved.model, saved.params, inputs, image_size=s4)
  return saved, inputs, s4, maps


def test_each_kind_has_its_shape_and_rows_sum_to_one_over_real_keys(example):
  _, inputs, _, maps = example
  t, o = 20, 6
  assert maps.language.shape == (2, 4, t, t)
  assert maps.vision.shape == (1, 4, o, o)
  assert maps.language_to_vision.shape == (2, 4, t, o)
  assert maps.vision_to_language.shape == (2, 4, o, t)
  pieces = tokenization.make_tokenizer("bert").tokenize(QUESTION)
  assert maps.real_tokens == ["[CLS]", *pieces, "[SEP]"]
  assert maps.tokens[len(pieces) + 2:] == ("[PAD]",) * (t - len(pieces) - 2)
  assert maps.box_mask.tolist() == [True] * 4 + [False] * 2
  np.testing.assert_allclose(maps.boxes, inputs["visual_pos"][0])
  keys = {"language": maps.token_mask, "vision": maps.box_mask,
          "language_to_vision": maps.box_mask, "vision_to_language": maps.token_mask}
  for kind, real in keys.items():
    probs = getattr(maps, kind)
    np.testing.assert_allclose(probs[..., real].sum(-1), 1.0, atol=1e-5, err_msg=kind)
    assert np.abs(probs[..., ~real]).max() < 1e-6, kind
    rows = maps.token_mask if kind.startswith("language") else maps.box_mask
    mean = maps.matrix(kind)
    assert mean.shape == (rows.sum(), real.sum())
    np.testing.assert_allclose(mean, probs[-1].mean(0)[rows][:, real], atol=1e-7)
    np.testing.assert_array_equal(maps.matrix(kind, layer=0, head=2), probs[0, 2][rows][:, real])


def _softmax_over_real(queries, keys, real, d):
  scores = queries @ keys.T / math.sqrt(d)
  scores[:, ~real] = -np.inf
  scores = np.exp(scores - scores.max(-1, keepdims=True))
  return scores / scores.sum(-1, keepdims=True)


def test_both_cross_directions_are_the_layers_own_query_key_softmax(example):
  saved, inputs, _, maps = example
  cfg = saved.model.config
  out = saved.model.apply({"params": saved.params}, **inputs, output_hidden_states=True,
                          output_attentions=True)
  # The last cross-modality layer reads the previous one's outputs.
  lang = np.asarray(out.language_hidden_states[cfg.l_layers + cfg.x_layers - 2][0], np.float64)
  visn = np.asarray(out.vision_hidden_states[cfg.r_layers + cfg.x_layers - 2][0], np.float64)
  att = saved.params["lxmert"]["encoder"][f"x_layers_{cfg.x_layers - 1}"]["visual_attention"]
  att = jax.tree.map(lambda a: np.asarray(a, np.float64), att["att"])

  def project(x, name, head):
    y = x @ att[name]["kernel"] + att[name]["bias"]
    return y[:, head * cfg.head_dim:(head + 1) * cfg.head_dim]

  head = 2
  want = _softmax_over_real(project(visn, "query", head), project(lang, "key", head),
                            maps.token_mask, cfg.head_dim)
  np.testing.assert_allclose(maps.vision_to_language[-1, head], want, atol=2e-5)
  want = _softmax_over_real(project(lang, "query", head), project(visn, "key", head),
                            maps.box_mask, cfg.head_dim)
  np.testing.assert_allclose(maps.language_to_vision[-1, head], want, atol=2e-5)
  # The direction transformers returns is the model's own output, unchanged.
  np.testing.assert_allclose(maps.language_to_vision[-1], out.cross_encoder_attentions[-1][0],
                             atol=1e-6)


def _box_rectangles(fig):
  return [p for ax in fig.axes for p in ax.patches
          if isinstance(p, matplotlib.patches.Rectangle) and (p.get_gid() or "").startswith("box")]


def _assert_pngs(paths):
  for path in paths:
    with open(path, "rb") as f:
      assert f.read(8) == PNG_SIGNATURE, path
    assert os.path.getsize(path) > 5000, path
    assert min(matplotlib.image.imread(path).shape[:2]) > 200, path


def test_figures_are_written_as_pngs_and_boxes_are_ranked_by_the_words_attention(
    example, tmp_path):
  _, _, (h, w), maps = example
  figures = attention_maps.attention_figures(maps, word="cube")
  assert tuple(figures) == attention_maps.FIGURE_NAMES
  paths = attention_maps.save_figures(figures, tmp_path / "out")
  assert paths == [str(tmp_path / "out" / f"{name}.png") for name in figures]
  _assert_pngs(paths)
  rectangles = _box_rectangles(figures["boxes"])
  assert len(rectangles) == 4
  # Rank 1 is written at the corner of the box "cube" attends to most.
  position = maps.real_tokens.index("cube")
  weights = maps.matrix("language_to_vision")[position]
  best = maps.boxes[int(np.argmax(weights))] * [w, h, w, h]
  ax = figures["boxes"].axes[0]
  first = [t for t in ax.texts if t.get_text() == "1"]
  assert len(first) == 1 and np.allclose(first[0].get_position(), best[:2], atol=1e-3)
  assert sorted(int(t.get_text()) for t in ax.texts) == [1, 2, 3, 4]
  assert ax.get_xlim() == (0, w) and ax.get_ylim() == (h, 0)


def test_boxes_are_drawn_over_the_picture_when_given(example, tmp_path):
  _, _, (h, w), maps = example
  picture = str(tmp_path / "image.png")
  matplotlib.image.imsave(picture, np.random.default_rng(1).uniform(size=(h, w, 3)))
  fig = attention_maps.plot_boxes_attention(maps, image=picture)
  assert len(fig.axes[0].images) == 1 and len(_box_rectangles(fig)) == 4
  matplotlib.image.imsave(picture, np.zeros((h, 2 * w, 3)))
  with pytest.raises(ValueError, match="expected the image the features were extracted from"):
    attention_maps.plot_boxes_attention(maps, image=picture)


def test_word_layer_head_and_direction_are_checked(example):
  maps = example[3]
  with pytest.raises(ValueError, match=r"word 'dog': not one of the question's word pieces"):
    attention_maps.plot_boxes_attention(maps, word="dog")
  with pytest.raises(ValueError, match="layer 2: the model has 2 language layers"):
    attention_maps.plot_language_attention(maps, layer=2)
  with pytest.raises(ValueError, match="head 4: expected 'mean' or a head index from -4 to 3"):
    attention_maps.plot_visual_attention(maps, head=4)
  with pytest.raises(ValueError, match="direction 'both'"):
    attention_maps.plot_cross_attention(maps, direction="both")
  with pytest.raises(ValueError, match=r"visual_feats'\]: shape \[1, 2, 6, 16\]"):
    attention_maps.attention(example[0].model, example[0].params,
                             {"input_ids": np.ones((1, 5), np.int32),
                              "visual_feats": np.zeros((1, 2, 6, F), np.float32),
                              "visual_pos": np.zeros((1, 2, 6, 4), np.float32)})


@pytest.fixture(scope="module")
def npz_file(tmp_path_factory):
  feats, boxes, size = _image(np.random.default_rng(3), 5)
  return _write_npz(str(tmp_path_factory.mktemp("npz") / "img.npz"), feats, boxes, size)


def test_cli_writes_every_figure(qa_dir, npz_file, tmp_path, capsys):
  argv = ["--model", qa_dir, "--features", npz_file, "--question", QUESTION, "--word", "color",
          "--layer", "0", "--head", "1", "--out", str(tmp_path / "maps")]
  assert cli.main(argv) == 0
  printed = capsys.readouterr().out.split()
  assert printed == [str(tmp_path / "maps" / f"{n}.png") for n in attention_maps.FIGURE_NAMES]
  _assert_pngs(printed)


@pytest.mark.parametrize("kind", ["pretraining", "nlvr2"])
def test_cli_draws_pretraining_and_nlvr2_models(kind, npz_file, tmp_path, capsys):
  config = LxmertConfig(**CONFIG, task_obj_predict=False, task_qa=False)
  model = (task_models.LxmertForPreTraining(config) if kind == "pretraining"
           else task_models.LxmertForNLVR2(config))
  directory = _save(str(tmp_path / kind), model, seed=1)
  assert cli.main(["--model", directory, "--features", npz_file, "--question", QUESTION,
                   "--out", str(tmp_path / "maps")]) == 0
  assert len(capsys.readouterr().out.split()) == len(attention_maps.FIGURE_NAMES)


@pytest.mark.parametrize("extra, message", [
    (["--head", "x"], "--head 'x': expected a head index or 'mean'"),
    (["--layer", "7"], "layer 7: the model has 2 language layers; expected -2 to 1"),
    (["--word", "dog"], "word 'dog': not one of the question's word pieces"),
    (["--image", "/nonexistent/image.jpg"], "/nonexistent/image.jpg"),
    (["--features", "/nonexistent/img.npz"], "/nonexistent/img.npz"),
])
def test_cli_bad_input_is_one_line_on_stderr(extra, message, qa_dir, npz_file, tmp_path,
                                             capsys):
  argv = ["--model", qa_dir, "--features", npz_file, "--question", QUESTION,
          "--out", str(tmp_path / "maps")]
  assert cli.main(argv + extra) == 1
  captured = capsys.readouterr()
  assert captured.out == ""
  lines = captured.err.splitlines()
  assert len(lines) == 1 and lines[0].startswith(f"{cli.PROG}: error: ")
  assert message in lines[0]


def test_cli_refuses_features_of_another_width(qa_dir, tmp_path, capsys):
  rng = np.random.default_rng(4)
  _, boxes, size = _image(rng, 3)
  path = _write_npz(str(tmp_path / "wide.npz"), np.ones((3, F + 1), np.float32), boxes, size)
  assert cli.main(["--model", qa_dir, "--features", path, "--question", QUESTION,
                   "--out", str(tmp_path / "maps")]) == 1
  assert f"{path} [x]: features are {F + 1} wide" in capsys.readouterr().err
  assert not os.path.exists(tmp_path / "maps")
