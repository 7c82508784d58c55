"""VQA v2 and GQA fine-tuning: an answer head on the pooled output, trained as the original.

The loss is the original's: binary cross-entropy with logits against the
soft answer scores, averaged over examples and answers and multiplied by the
number of answers (`losses.soft_target_bce_loss`). The dev metrics:

* VQA: LXMERT's soft score (`eval/soft_score`: the label's score of the
  predicted answer, what the original code logs) and, when the official
  annotations are given (`config.eval.vqa_annotations`; the built-in corpus
  ships its own), the official accuracy of GT-Vision-Lab's `vqaEval.py`
  (`eval/vqa_accuracy`, overall and per answer type, in percent as the
  evaluator prints it).
* GQA: accuracy (`eval/accuracy`): exact match of the predicted answer with
  the gold one, what GQA's `eval.py` calls accuracy; with the official
  questions file (`config.eval.gqa_questions`) the evaluator's binary/open,
  validity, plausibility and distribution figures too.
"""

from __future__ import annotations

import collections
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from lxmert_jax import evaluation
from lxmert_jax.evaluation import submission
from lxmert_jax.model.task_models import LxmertForQuestionAnswering
from lxmert_jax.tasks import finetuning
from lxmert_jax.tasks.base import Batch
from lxmert_jax.tasks.finetuning import MODEL_INPUTS, SplitPredictions, model_config_from

BENCHMARKS = ("vqa", "gqa")


class QuestionAnsweringTask(finetuning.FinetuningTask):
  """VQA or GQA fine-tuning of `LxmertForQuestionAnswering`.

  Args:
    config: the run config (`config.task` is "vqa" or "gqa").
    model_config: the model's config (`num_qa_labels` = the answer vocabulary).
    answers: the answer vocabulary (label2ans).
    data: the data side (`finetuning_data.FinetuneData`), or None.
  """

  def __init__(self, config: ml_collections.ConfigDict, model_config: Any,
               answers: list[str], data: Any = None):
    super().__init__(config, data)
    if config.task not in BENCHMARKS:
      raise ValueError(f"config.task {config.task!r}: expected one of {BENCHMARKS}")
    self.name = config.task
    self.score_name = "soft_score" if self.name == "vqa" else "accuracy"
    self.model_config = model_config
    self.model = LxmertForQuestionAnswering(model_config)
    self.answers = list(answers)

  def example_outputs(self, params: Any, batch: Batch, key: jax.Array, *,
                      deterministic: bool) -> dict[str, jax.Array]:
    out = self.model.apply({"params": params}, **{k: batch[k] for k in MODEL_INPUTS},
                           deterministic=deterministic, rngs={"dropout": key})
    logits = out.question_answering_score.astype(jnp.float32)
    targets = batch["answer_targets"].astype(jnp.float32)
    # The original: BCEWithLogits mean over B x A, times A = per-example sum over answers.
    loss = jnp.sum(optax.sigmoid_binary_cross_entropy(logits, targets), axis=-1)
    predicted = jnp.argmax(logits, axis=-1)
    score = jnp.take_along_axis(targets, predicted[:, None], axis=-1)[:, 0]
    return {"loss": loss, "predicted": predicted.astype(jnp.int32), "score": score,
            "finite": jnp.all(jnp.isfinite(logits), axis=-1)}

  def answer_strings(self, predictions: SplitPredictions) -> list[str]:
    return [self.answers[i] for i in predictions.predicted]

  def labelled(self, predictions: SplitPredictions) -> bool:
    targets = self.data.split_targets(predictions.split)
    return any(len(ids) for ids, _ in targets)

  def split_metrics(self, predictions: SplitPredictions) -> dict[str, float]:
    out = {"loss": float(np.mean(predictions.outputs["loss"])),
           self.score_name: float(np.mean(predictions.outputs["score"]))}
    answers = dict(zip(predictions.ids, self.answer_strings(predictions)))
    if self.name == "vqa":
      out.update(self._official_vqa(answers))
    else:
      out.update(self._official_gqa(answers))
    return out

  def _official_vqa(self, answers: dict[str, str]) -> dict[str, float]:
    path = self.config.eval.vqa_annotations or self.data.demo_vqa_annotations()
    if not path:
      return {}
    annotations = evaluation.load_vqa_annotations(path)
    by_id = {str(a["question_id"]): a["question_id"] for a in annotations}
    missing = [q for q in answers if q not in by_id]
    if missing:
      raise evaluation.EvaluationError(
          f"{len(missing)} questions of the split have no annotation, e.g. {missing[:5]}",
          path=path)
    scores = evaluation.evaluate_vqa({by_id[q]: a for q, a in answers.items()}, annotations,
                                     question_ids=[by_id[q] for q in answers],
                                     annotations_file=path)
    out = {"vqa_accuracy": scores.overall}
    out.update({f"vqa_accuracy/{kind}": value for kind, value in scores.per_answer_type.items()})
    return out

  def _official_gqa(self, answers: dict[str, str]) -> dict[str, float]:
    path = self.config.eval.gqa_questions
    if not path:
      return {}
    choices_path = self.config.eval.gqa_choices or None
    scores = evaluation.evaluate_gqa(
        answers, evaluation.load_gqa_questions(path),
        choices=None if choices_path is None else evaluation.load_gqa_choices(choices_path),
        questions_file=path, choices_file=choices_path)
    figures = {"accuracy": scores.accuracy, "binary": scores.binary, "open": scores.open,
               "validity": scores.validity, "plausibility": scores.plausibility,
               "distribution": scores.distribution}
    return {f"gqa_official/{k}": v for k, v in figures.items() if v is not None}

  @property
  def submission_name(self) -> str:
    return f"{self.name}_{{split}}_submission.json"

  def write_submission(self, predictions: SplitPredictions, path: str) -> str:
    pairs = list(zip(predictions.ids, self.answer_strings(predictions)))
    write = (submission.write_vqa_submission if self.name == "vqa"
             else submission.write_gqa_submission)
    write(path, pairs, predictions.ids)
    return path

  def chance_level(self) -> str:
    """The best single answer given to every dev question, and what it scores."""
    targets = self.data.split_targets(self.config.data.eval_split)
    totals: collections.Counter = collections.Counter()
    for ids, scores in targets:
      for i, s in zip(ids, scores):
        totals[int(i)] += float(s)
    if not totals or not targets:
      return ""
    best, total = totals.most_common(1)[0]
    return (f"answering {self.answers[best]!r} to every question scores {self.score_name} "
            f"{total / len(targets):.3f}")

  def format_metrics(self, metrics, prefix: str) -> str:
    """The base line without the per-answer-type breakdown (it is in metrics.jsonl)."""
    return super().format_metrics(
        {k: v for k, v in metrics.items() if not k.startswith(f"{prefix}/vqa_accuracy/")},
        prefix)


def build(config: ml_collections.ConfigDict, workdir: str,
          mesh: jax.sharding.Mesh) -> QuestionAnsweringTask:
  """The VQA or GQA task of a run (`config.task`), its data found or built first."""
  del mesh
  from lxmert_jax.tasks import finetuning_data  # pylint: disable=import-outside-toplevel
  data = finetuning_data.FinetuneData(config, workdir, config.task)
  model_config = model_config_from(config, data.model_fields())
  return QuestionAnsweringTask(config, model_config, data.label2ans, data)

