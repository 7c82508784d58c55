"""The prediction API and command line: top-k answers as the model scores its training inputs.

Reference scores come from `model.apply` on inputs built here the way the
data pipeline builds them (the tokenizer's framing; boxes and features stored
by the feature writer's own `stored_record`), so a predictor that fed the
model differently from fine-tuning would disagree. The command-line tests
write `.npz` files as bottom-up-attention.pytorch's `save_roi_features` does.
A fine-tuning run directory is checked in `test_finetuning.py`, which trains
one.
"""

import json
import os
import re
import shutil
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest

from lxmert_jax.convert import checkpoints
from lxmert_jax.convert.errors import ConversionError
from lxmert_jax.data import tokenization
from lxmert_jax.data.prepare import feature_sets
from lxmert_jax.data.prepare import tsv_features
from lxmert_jax.inference import PredictionError, Predictor
from lxmert_jax.inference import predictor as predictor_lib
from lxmert_jax.model import task_models
from lxmert_jax.model.config import LxmertConfig
from lxmert_jax import predict as predict_cli

pytestmark = pytest.mark.usefixtures("fast_compile")

F = 16
ANSWERS = ["yes", "no", "red", "two", "cat", "dog", "blue"]
QUESTIONS = ["What color is the cube?", "Is there a dog?", "how many cats are there",
             "What is on the table?", "Is it raining?"]
CONFIG = dict(vocab_size=30522, hidden_size=32, num_attention_heads=4, intermediate_size=48,
              l_layers=1, x_layers=1, r_layers=1, visual_feat_dim=F,
              num_qa_labels=len(ANSWERS), max_position_embeddings=32,
              # Wide enough an init that answers differ between questions and that
              # features not rounded as the store keeps them change the scores
              # (by ~5e-5, beyond the tolerance below).
              initializer_range=0.2)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _init(model, seed=0):
  return model.init(jax.random.key(seed), **task_models.init_inputs(model))["params"]


@pytest.fixture(scope="module")
def qa(tmp_path_factory):
  """(model, params, checkpoint directory) of a tiny QA model with answers.json."""
  model = task_models.LxmertForQuestionAnswering(LxmertConfig(**CONFIG))
  params = _init(model)
  directory = str(tmp_path_factory.mktemp("qa") / "ckpt")
  checkpoints.save_model(directory, model, params, answers=ANSWERS)
  return model, params, directory


@pytest.fixture(scope="module")
def predictor(qa):
  return Predictor.load(qa[2], batch_size=4)


def _image(rng, n, img_id="img"):
  """An image as the extractor yields it: pixel boxes inside a random size, ReLU features."""
  h, w = int(rng.integers(200, 500)), int(rng.integers(200, 640))
  x1, y1 = rng.uniform(0, w / 2, n), rng.uniform(0, h / 2, n)
  boxes = np.stack([x1, y1, rng.uniform(x1 + 1, w), rng.uniform(y1 + 1, h)], 1)
  zeros = np.zeros((n,), np.int64)
  return tsv_features.ImageFeatures(
      img_id=img_id, img_h=h, img_w=w, objects_id=zeros, objects_conf=zeros.astype(np.float32),
      attrs_id=zeros, attrs_conf=zeros.astype(np.float32), boxes=boxes.astype(np.float32),
      features=rng.uniform(0, 4, (n, F)).astype(np.float32))


def _images(counts, seed=0):
  rng = np.random.default_rng(seed)
  return [_image(rng, n, f"img{i}") for i, n in enumerate(counts)]


def _reference(model, params, questions, images, top_k=5):
  """Top-k of `model.apply` on inputs stored and batched as the data pipeline does."""
  tok = tokenization.make_tokenizer("bert")
  out = []
  for q, img in zip(questions, images):
    rec = feature_sets.stored_record(img, "test", None)
    ids, mask = tok.encode(q, 20)
    scores = model.apply(
        {"params": params}, input_ids=ids[None], attention_mask=mask[None],
        token_type_ids=np.zeros_like(ids)[None],
        visual_feats=rec["features"].astype(np.float32)[None], visual_pos=rec["boxes"][None],
        visual_attention_mask=np.ones((1, img.num_boxes), np.int32), deterministic=True
    ).question_answering_score[0]
    probs = 1 / (1 + np.exp(-np.asarray(scores, np.float64)))
    order = np.argsort(-probs, kind="stable")[:top_k]
    out.append([(ANSWERS[k], float(probs[k])) for k in order])
  return out


def _predict(p, questions, images, **kw):
  return p.predict(questions, [i.features for i in images], [i.boxes for i in images],
                   image_sizes=[(i.img_h, i.img_w) for i in images], **kw)


def _assert_same(got, want, atol=2e-6):
  assert len(got) == len(want)
  for g, w in zip(got, want):
    assert [a for a, _ in g] == [a for a, _ in w]
    np.testing.assert_allclose([p for _, p in g], [p for _, p in w], atol=atol, rtol=0)


def test_answers_are_the_models_top_k_on_store_normalised_inputs(qa, predictor):
  model, params, _ = qa
  images = _images([6, 6, 6])
  got = predictor.predict(QUESTIONS[:3], np.stack([i.features for i in images]),
                          np.stack([i.boxes for i in images]),
                          image_sizes=[(i.img_h, i.img_w) for i in images], top_k=5)
  _assert_same(got, _reference(model, params, QUESTIONS[:3], images))
  assert all(len(r) == 5 and all(0 < p < 1 for _, p in r) for r in got)
  assert all(r[0][1] >= r[-1][1] for r in got)
  # Sigmoid per answer: all seven of a question do not sum to 1.
  full = predictor.predict(QUESTIONS[:1], [images[0].features], [images[0].boxes],
                           image_sizes=[(images[0].img_h, images[0].img_w)], top_k=7)
  assert sorted(a for a, _ in full[0]) == sorted(ANSWERS)
  assert abs(sum(p for _, p in full[0]) - 1) > 0.1


def test_normalised_boxes_give_the_same_answers(qa, predictor):
  images = _images([4, 4])
  stored = [feature_sets.stored_record(i, "test", None)["boxes"] for i in images]
  got = predictor.predict(QUESTIONS[:2], [i.features for i in images], stored,
                          boxes_normalized=True)
  _assert_same(got, _predict(predictor, QUESTIONS[:2], images), atol=1e-6)


def test_batches_of_any_size_agree(qa, predictor):
  images = _images([5] * 7, seed=1)
  questions = (QUESTIONS * 2)[:7]
  small = _predict(predictor, questions, images)  # batch_size 4: 4 + 3 padded to 4
  one = _predict(Predictor(qa[0], qa[1], ANSWERS, batch_size=64), questions, images)
  _assert_same(small, one)
  _assert_same(small, _reference(qa[0], qa[1], questions, images))


def test_images_with_different_box_counts_are_padded_and_masked(qa, predictor):
  images = _images([2, 7, 3, 1], seed=2)
  got = _predict(predictor, QUESTIONS[:4], images, top_k=3)
  _assert_same(got, _reference(qa[0], qa[1], QUESTIONS[:4], images, top_k=3))
  # A run's num_objects keeps each image's first boxes, as the feature store does.
  cut = Predictor(qa[0], qa[1], ANSWERS, max_boxes=3)
  for img in images:
    img.features, img.boxes = img.features[:3], img.boxes[:3]
  _assert_same(_predict(cut, QUESTIONS[:4], _images([2, 7, 3, 1], seed=2), top_k=3),
               _reference(qa[0], qa[1], QUESTIONS[:4], images, top_k=3))


def test_pretraining_model_answers_with_its_qa_head(tmp_path):
  model = task_models.LxmertForPreTraining(LxmertConfig(**CONFIG, task_obj_predict=False))
  params = _init(model, seed=3)
  checkpoints.save_model(tmp_path / "pre", model, params, answers=ANSWERS)
  images = _images([4, 4], seed=3)
  got = _predict(Predictor.load(tmp_path / "pre"), QUESTIONS[:2], images)
  _assert_same(got, _reference(model, params, QUESTIONS[:2], images))


def test_vocabulary_missing_or_of_another_size_is_refused(qa, tmp_path):
  model, params, directory = qa
  bare = str(tmp_path / "bare")
  checkpoints.save_model(bare, model, params)
  with pytest.raises(ConversionError, match=f"{bare}: no answers.json"):
    Predictor.load(bare)
  # A vocabulary given by hand, or the original all_ans.json format.
  assert Predictor.load(bare, answers=ANSWERS).answers == ANSWERS
  table = tmp_path / "all_ans.json"
  table.write_text(json.dumps([{"ans": a, "dsets": ["vqa"]} for a in ANSWERS]))
  assert Predictor.load(bare, answers=str(table)).answers == ANSWERS
  wrong = str(tmp_path / "wrong")
  shutil.copytree(directory, wrong)
  (tmp_path / "wrong" / "answers.json").write_text(json.dumps(ANSWERS[:-1]))
  with pytest.raises(ConversionError, match=f"{wrong}/answers.json: 6 answers for an answer "
                     "head of 7 rows"):
    Predictor.load(wrong)
  nlvr2 = task_models.LxmertForNLVR2(LxmertConfig(**CONFIG))
  checkpoints.save_model(tmp_path / "nlvr2", nlvr2, _init(nlvr2))
  with pytest.raises(ConversionError, match="LxmertForNLVR2, which has no answer head"):
    Predictor.load(tmp_path / "nlvr2")


def test_nan_is_an_error_never_an_answer(qa, predictor):
  images = _images([3, 3], seed=4)
  images[1].features[2, 5] = np.nan
  with pytest.raises(PredictionError, match="image 1: the features of box 2 are NaN"):
    _predict(predictor, QUESTIONS[:2], images)
  model, params, _ = qa
  broken = jax.tree.map(np.asarray, params)
  broken["answer_head"]["logit_fc_3"]["bias"] = np.full((len(ANSWERS),), np.nan, np.float32)
  with pytest.raises(PredictionError, match="question 0 .*NaN or infinite"):
    _predict(Predictor(model, broken, ANSWERS), QUESTIONS[:1], _images([3]))


@pytest.mark.parametrize("change, message", [
    (dict(features=lambda f: [x[:, :-1] for x in f]), r"image 0: features have shape \[3, 15\]; "
     r"expected \[num_boxes, 16\] \(the model's visual_feat_dim\)"),
    (dict(boxes=lambda b: [x[:, :3] for x in b]), r"image 0: boxes have shape \[3, 3\]"),
    (dict(boxes=lambda b: b[:1]), "2 images of features but 1 of boxes"),
    (dict(questions=lambda q: q[:1]), "1 questions but 2 images"),
    (dict(image_sizes=lambda s: None), "image_sizes: required for pixel boxes"),
    (dict(image_sizes=lambda s: [(10, 10)] * 2), r"image 0: box \(pixels, in the 10x10 image\) "
     "0 = .* lies outside the image"),
    (dict(boxes_normalized=lambda _: True, image_sizes=lambda s: None),
     r"image 0: normalised box 0 = .* lies outside"),
    (dict(top_k=lambda _: 8), "top_k=8: expected 1 to 7"),
    (dict(questions=lambda q: "one question"), "questions: expected a list of strings"),
])
def test_bad_inputs_are_named(predictor, change, message):
  images = _images([3, 3], seed=5)
  kw = dict(questions=QUESTIONS[:2], features=[i.features for i in images],
            boxes=[i.boxes for i in images], image_sizes=[(i.img_h, i.img_w) for i in images],
            boxes_normalized=False, top_k=5)
  for key, f in change.items():
    kw[key] = f(kw[key])
  with pytest.raises(PredictionError, match=message):
    predictor.predict(kw.pop("questions"), kw.pop("features"), kw.pop("boxes"), **kw)


# --- Command line -----------------------------------------------------------------------


def _write_npz(directory, img):
  """One file as `save_roi_features` writes it (np.savez_compressed, `info` a dict)."""
  info = {"image_id": img.img_id, "image_h": img.img_h, "image_w": img.img_w,
          "num_boxes": img.num_boxes, "objects_id": img.objects_id,
          "objects_conf": img.objects_conf}
  path = os.path.join(directory, img.img_id)
  np.savez_compressed(path, x=img.features, bbox=img.boxes, num_bbox=img.num_boxes,
                      image_h=img.img_h, image_w=img.img_w, info=info)
  return path + ".npz"


def test_cli_answers_each_question_about_its_image(qa, predictor, tmp_path, capsys):
  images = _images([4, 6], seed=6)
  files = [_write_npz(str(tmp_path), img) for img in images]
  argv = ["--model", qa[2], "--features", files[0], "--question", QUESTIONS[0],
          "--features", files[1], "--question", QUESTIONS[1], "--top_k", "3"]
  assert predict_cli.main(argv + ["--json"]) == 0
  result = json.loads(capsys.readouterr().out)
  want = _predict(predictor, QUESTIONS[:2], images, top_k=3)
  assert [r["question"] for r in result["predictions"]] == QUESTIONS[:2]
  assert [r["features"] for r in result["predictions"]] == files
  got = [[(a["answer"], a["probability"]) for a in r["answers"]] for r in result["predictions"]]
  _assert_same(got, want, atol=1e-6)
  assert [a["rank"] for a in result["predictions"][0]["answers"]] == [1, 2, 3]
  # The table: each question, then its ranked answers.
  assert predict_cli.main(argv) == 0
  table = capsys.readouterr().out.splitlines()
  assert table[0] == f"{QUESTIONS[0]}  ({files[0]})"
  assert table[2].split() == ["1", want[0][0][0], f"{want[0][0][1]:.4f}"]
  # One image for every question.
  assert predict_cli.main(["--model", qa[2], "--features", files[1], "--question", QUESTIONS[0],
                           "--question", QUESTIONS[1], "--json"]) == 0
  both = json.loads(capsys.readouterr().out)["predictions"]
  assert [r["features"] for r in both] == [files[1]] * 2
  assert [a["answer"] for a in both[1]["answers"]] == [a for a, _ in _predict(
      predictor, QUESTIONS[1:2], images[1:], top_k=5)[0]]


@pytest.mark.parametrize("argv, message", [
    (lambda m, f: ["--model", m, "--features", f, "--features", f, "--question", "a?",
                   "--question", "b?", "--question", "c?"], "3 --question but 2 --features"),
    (lambda m, f: ["--model", m, "--features", f + ".missing", "--question", "a?"],
     r"\.missing"),
    (lambda m, f: ["--model", m + "-missing", "--features", f, "--question", "a?"],
     "-missing: no such directory"),
    (lambda m, f: ["--model", m, "--features", f, "--question", "a?", "--top_k", "9"],
     "--top_k 9: the model has only 7 answers"),
    (lambda m, f: ["--model", m, "--features", f], "--question"),
])
def test_cli_bad_input_is_one_line(qa, tmp_path, capsys, argv, message):
  path = _write_npz(str(tmp_path), _images([3])[0])
  assert predict_cli.main(argv(qa[2], path)) == 1
  captured = capsys.readouterr()
  assert captured.out == ""
  lines = captured.err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("python -m lxmert_jax.predict: error: ")
  assert re.search(message, lines[0]), lines[0]


def test_cli_feature_width_other_than_the_models_names_the_file(qa, tmp_path, capsys):
  img = _images([3])[0]
  img.features = np.ones((3, F + 1), np.float32)
  path = _write_npz(str(tmp_path), img)
  assert predict_cli.main(["--model", qa[2], "--features", path, "--question", "a?"]) == 1
  assert f"{path} [x]: features are 17 wide" in capsys.readouterr().err


def test_cli_as_a_module(qa, tmp_path):
  images = _images([5], seed=7)
  path = _write_npz(str(tmp_path), images[0])
  proc = subprocess.run(
      [sys.executable, "-m", "lxmert_jax.predict", "--model", qa[2], "--features", path,
       "--question", QUESTIONS[2], "--top_k", "2", "--json"],
      cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr
  (row,) = json.loads(proc.stdout)["predictions"]
  got = [(a["answer"], a["probability"]) for a in row["answers"]]
  _assert_same([got], _reference(qa[0], qa[1], QUESTIONS[2:3], images, top_k=2))
  bad = subprocess.run(
      [sys.executable, "-m", "lxmert_jax.predict", "--model", qa[2], "--features", path,
       "--features", path, "--question", "a?", "--question", "b?", "--question", "c?"],
      cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
  assert bad.returncode == 1 and bad.stdout == ""
  assert bad.stderr.strip().splitlines() == [
      "python -m lxmert_jax.predict: error: 3 --question but 2 --features; expected one "
      "--features per --question, or a single one for all"]


def test_a_run_whose_data_is_gone_tokenises_with_bert(tmp_path):
  # pylint: disable=protected-access
  run_config = ml_collections.ConfigDict(dict(task="vqa",
                                             data=dict(dir=str(tmp_path / "gone"))))
  with pytest.warns(UserWarning, match="cannot read the tokenizer of its data"):
    tok = predictor_lib._run_tokenizer(str(tmp_path), run_config)
  assert tok.fingerprint == tokenization.make_tokenizer("bert").fingerprint
