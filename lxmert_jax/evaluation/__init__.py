"""Benchmark metrics for the fine-tuning tasks.

The `vqa`, `gqa` and `nlvr2` modules compute the figures papers report, from
answer strings, exactly as each benchmark's official evaluator does, so a
number from here can be put next to a leaderboard entry; `lxmert_soft_score`
is the original LXMERT code's own score, for comparing with its logs.
`checkpoint_eval` scores a fine-tuned checkpoint on a split
(`python -m lxmert_jax.evaluate`).

`submission` writes the files the benchmark servers take (VQA results, GQA
predictions, the NLVR2 CSV), and only once they hold exactly one prediction
for every question of the split. `python -m lxmert_jax.evaluation` (`cli`)
scores such a file against a split's annotations with the official metrics.
"""

from lxmert_jax.evaluation.common import EvaluationError
from lxmert_jax.evaluation.gqa import (GQAScores, evaluate_gqa, evaluate_gqa_files,
                                       load_gqa_choices, load_gqa_predictions,
                                       load_gqa_questions)
from lxmert_jax.evaluation.nlvr2 import (NLVR2Scores, evaluate_nlvr2, evaluate_nlvr2_files,
                                         load_nlvr2_examples, load_nlvr2_predictions,
                                         sentence_key)
from lxmert_jax.evaluation.submission import (write_gqa_submission, write_nlvr2_submission,
                                              write_vqa_submission)
from lxmert_jax.evaluation.vqa import (VQAAccuracy, evaluate_vqa, evaluate_vqa_files,
                                       load_lxmert_split, load_vqa_annotations,
                                       load_vqa_results, lxmert_soft_score, normalize_answer,
                                       question_accuracy)

__all__ = [
    "EvaluationError", "GQAScores", "NLVR2Scores", "VQAAccuracy", "evaluate_gqa",
    "evaluate_gqa_files", "evaluate_nlvr2", "evaluate_nlvr2_files", "evaluate_vqa",
    "evaluate_vqa_files", "load_gqa_choices", "load_gqa_predictions", "load_gqa_questions",
    "load_lxmert_split", "load_nlvr2_examples", "load_nlvr2_predictions",
    "load_vqa_annotations", "load_vqa_results", "lxmert_soft_score", "normalize_answer",
    "question_accuracy", "sentence_key", "write_gqa_submission", "write_nlvr2_submission",
    "write_vqa_submission",
]
