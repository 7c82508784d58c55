"""Fine-tuning end to end on the built-in corpus: train, evaluate, submit, for VQA, GQA and NLVR2.

Each task is fine-tuned once (configs/<task>.py:tiny, one epoch) in a
module-scoped run; the tests then score its best checkpoint with the
evaluation entry point and check the submission file and the metrics against
expectations computed here from the corpus's own files, not from the code
under test.
"""

import json
import os

import numpy as np
import pytest

from configs import gqa as gqa_config
from configs import nlvr2 as nlvr2_config
from configs import vqa as vqa_config
from lxmert_jax import evaluation
from lxmert_jax.data import store
from lxmert_jax.evaluation import checkpoint_eval
from lxmert_jax.inference import saved_models
from lxmert_jax.training import trainer

pytestmark = pytest.mark.usefixtures("fast_compile")

CONFIGS = {"vqa": vqa_config, "gqa": gqa_config, "nlvr2": nlvr2_config}


def tiny_config(task):
  config = CONFIGS[task].get_config("tiny")
  config.num_epochs = 1
  return config


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """task -> (config, run directory, the run's returned metrics), trained lazily."""
  done = {}

  def run(task):
    if task not in done:
      workdir = str(tmp_path_factory.mktemp(f"{task}_run"))
      config = tiny_config(task)
      done[task] = (config, workdir, trainer.train_and_evaluate(config, workdir))
    return done[task]
  return run


def _corpus_file(workdir, *parts):
  return os.path.join(workdir, "demo_data", "corpus", *parts)


def test_vqa_fine_tune_evaluate_and_submit(runs, tmp_path):
  config, workdir, result = runs("vqa")
  assert np.isfinite(result["eval/loss"])
  summary = checkpoint_eval.evaluate_checkpoint(config, workdir, "minival", str(tmp_path))
  run_dir = saved_models.resolve_step(workdir, "best")
  assert summary["step"] == run_dir
  submission = tmp_path / "vqa_minival_submission.json"
  content = json.loads(submission.read_text())
  records = json.loads(open(_corpus_file(workdir, "vqa", "minival.json")).read())
  # Complete: one entry per minival question, ids as ints.
  assert sorted(e["question_id"] for e in content) == sorted(r["question_id"] for r in records)
  assert all(isinstance(e["question_id"], int) for e in content)
  # LXMERT's soft score, recomputed from the corpus's own labels.
  answers = {e["question_id"]: e["answer"] for e in content}
  expected_soft = np.mean([r["label"].get(answers[r["question_id"]], 0.0) for r in records])
  assert summary["metrics"]["soft_score"] == pytest.approx(expected_soft, abs=1e-6)
  # The official evaluator, on the written file and the corpus's annotations.
  official = evaluation.evaluate_vqa_files(
      submission, _corpus_file(workdir, "vqa", "v2_mscoco_val2014_annotations.json"),
      question_ids=[r["question_id"] for r in records])
  assert summary["metrics"]["vqa_accuracy"] == official.overall
  assert (tmp_path / "metrics.json").exists()


def test_gqa_fine_tune_evaluate_and_submit(runs, tmp_path):
  config, workdir, _ = runs("gqa")
  summary = checkpoint_eval.evaluate_checkpoint(config, workdir, "testdev", str(tmp_path))
  content = json.loads((tmp_path / "gqa_testdev_submission.json").read_text())
  data_dir = os.path.join(workdir, "demo_data")
  label2ans = store.dataset_info(data_dir, "gqa")["label2ans"]
  records = store.Records(data_dir, "gqa", ["testdev"])
  gold = {}
  for i in range(len(records)):
    r = records[i]
    gold[r["question_id"].decode()] = {label2ans[a] for a in r["ans_ids"]}
  assert sorted(e["questionId"] for e in content) == sorted(gold)
  expected = np.mean([e["prediction"] in gold[e["questionId"]] for e in content])
  assert summary["metrics"]["accuracy"] == pytest.approx(expected, abs=1e-6)


def test_nlvr2_fine_tune_evaluate_and_submit(runs, tmp_path):
  config, workdir, result = runs("nlvr2")
  summary = checkpoint_eval.evaluate_checkpoint(config, workdir, "valid", str(tmp_path))
  csv = tmp_path / "nlvr2_valid_predictions.csv"
  lines = csv.read_text().splitlines()
  assert all(line.split(",")[1] in ("True", "False") for line in lines)
  examples = _corpus_file(workdir, "nlvr2", "valid.json")
  assert len(lines) == len(json.loads(open(examples).read()))
  official = evaluation.evaluate_nlvr2_files(csv, examples)
  assert summary["metrics"]["accuracy"] == pytest.approx(official.accuracy)
  assert summary["metrics"]["consistency"] == pytest.approx(official.consistency)
  # The run's own last evaluation is the same model's (one epoch: one evaluation).
  assert result["eval/accuracy"] == pytest.approx(official.accuracy)


def test_evaluating_with_another_answer_vocabulary_is_refused(runs, tmp_path):
  config, workdir, _ = runs("vqa")
  answers = json.loads(open(os.path.join(workdir, "answers.json")).read())
  other = tmp_path / "run"
  other.mkdir()
  os.symlink(os.path.join(workdir, "checkpoints"), other / "checkpoints")
  for name in ("model_config.json", "run_config.json"):
    (other / name).write_text(open(os.path.join(workdir, name)).read())
  (other / "answers.json").write_text(json.dumps(answers[::-1]))
  with pytest.raises(checkpoint_eval.CheckpointMismatchError, match="answers.json differs"):
    checkpoint_eval.evaluate_checkpoint(config, str(other), "minival", str(tmp_path / "out"),
                                        workdir=workdir)


def test_a_missing_split_is_named(runs, tmp_path):
  config, workdir, _ = runs("vqa")
  with pytest.raises(Exception, match="no split.*'test'"):
    checkpoint_eval.evaluate_checkpoint(config, workdir, "test", str(tmp_path))


def test_nan_scores_stop_evaluation_without_a_submission(runs, tmp_path, monkeypatch):
  config, workdir, _ = runs("vqa")
  real = saved_models.load_saved_model

  def broken(path, step="best"):
    saved = real(path, step)
    kernel = saved.params["answer_head"]["logit_fc_3"]["bias"]
    saved.params["answer_head"]["logit_fc_3"]["bias"] = np.full(kernel.shape, np.nan,
                                                                np.float32)
    return saved
  monkeypatch.setattr(saved_models, "load_saved_model", broken)
  from lxmert_jax.tasks.finetuning import NonFiniteScoresError  # pylint: disable=import-outside-toplevel
  with pytest.raises(NonFiniteScoresError, match="NaN or Inf"):
    checkpoint_eval.evaluate_checkpoint(config, workdir, "minival", str(tmp_path))
  assert not list(tmp_path.iterdir())


def test_fine_tuning_starts_from_a_pre_training_run_directory(tmp_path, demo_data):
  from configs import pretrain  # pylint: disable=import-outside-toplevel
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  from lxmert_jax.data.prepare.annotations import convert_ans  # pylint: disable=import-outside-toplevel
  from lxmert_jax.tasks import question_answering  # pylint: disable=import-outside-toplevel
  from lxmert_jax.training import init_weights  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  pre = pretrain.get_config("tiny")
  pre.data.dir = demo_data
  pre.num_train_steps = 2
  pre_dir = str(tmp_path / "pretrain")
  trainer.train_and_evaluate(pre, pre_dir)
  table = json.loads(open(os.path.join(pre_dir, "answers.json")).read())

  config = tiny_config("vqa")
  config.init.mode, config.init.path = "lxmert", pre_dir
  task = question_answering.build(config, str(tmp_path / "vqa"), None)
  params, report = init_weights.initial_params(config.init, task.model, task.model_config,
                                               jax.random.key(0), answers=task.answers)
  known = set(table)
  expected = sum(convert_ans(a) in known for a in task.answers)
  assert f"answer head: {expected} of {len(task.answers)} answers transferred" in report.summary()
  # The encoder is the best checkpoint's (the only evaluated one), read back by orbax alone.
  step = max(int(s) for s in os.listdir(os.path.join(pre_dir, "checkpoints")) if s.isdigit())
  state = ocp.StandardCheckpointer().restore(os.path.join(pre_dir, "checkpoints", str(step),
                                                          "state"))
  np.testing.assert_array_equal(
      params["lxmert"]["embeddings"]["word_embeddings"]["embedding"],
      state["params"]["lxmert"]["embeddings"]["word_embeddings"]["embedding"])


def test_a_run_directory_answers_as_its_evaluation_scored(runs, tmp_path):
  """Raw pixel boxes of the corpus's TSV give the scores of the run's own eval batches.

  The run (configs/vqa.py:tiny) keeps 10 of each image's 36 boxes, so this
  also checks that the predictor takes `num_objects` from the run's config.
  """
  # pylint: disable=import-outside-toplevel
  from lxmert_jax import predict as predict_cli
  from lxmert_jax.data import make_downstream_loader
  from lxmert_jax.data.prepare import tsv_features
  from lxmert_jax.inference import Predictor
  from test_predict import _assert_same, _predict, _write_npz
  _, workdir, _ = runs("vqa")
  p = Predictor.load(workdir)
  assert (p.step, p.max_boxes, p.max_seq_length) == (16, 10, 20)
  data_dir = os.path.join(workdir, "demo_data")
  batch = next(iter(make_downstream_loader("vqa", data_dir, "minival", batch_size=16, seed=0,
                                           train=False, num_objects=10)))
  keys = ("input_ids", "attention_mask", "token_type_ids", "visual_feats", "visual_pos",
          "visual_attention_mask")
  scores = p.model.apply({"params": p.params}, **{k: batch[k] for k in keys},
                         deterministic=True).question_answering_score
  tsv = os.path.join(data_dir, "corpus", "mscoco_imgfeat", "val2014_obj36.tsv")
  images = {img.img_id: img for img in (tsv_features.decode_row(row, tsv)
                                        for row in tsv_features.iter_rows(tsv))}
  records = store.Records(data_dir, "vqa", ["minival"])
  real = int(batch["_mask"].sum())
  questions = [records[i]["sent"].decode() for i in range(real)]
  pixels = [images[records[i]["img_id"].decode()] for i in range(real)]
  assert all(img.num_boxes == 36 for img in pixels)
  probs = 1 / (1 + np.exp(-np.asarray(scores[:real], np.float64)))
  want = [[(p.answers[k], float(row[k])) for k in np.argsort(-row, kind="stable")[:5]]
          for row in probs]
  _assert_same(_predict(p, questions, pixels), want, atol=1e-6)
  # Through the command line as well, from an extractor file of the first image.
  path = _write_npz(str(tmp_path), pixels[0])
  assert predict_cli.main(["--model", workdir, "--features", path, "--question",
                           questions[0], "--json"]) == 0
