"""The original code's answer-head transfer (`load_lxmert_qa`), for fine-tuning VQA and GQA.

Pre-training ends with an answer head over the pre-training answer table
(9,500 answers in the released model); a fine-tuning task has its own answer
vocabulary (3,129 for VQA, 1,842 for GQA). The head's hidden layers
(`logit_fc_0`, `logit_fc_2`) are copied as they are. Row r of the new output
layer (`logit_fc_3`) takes the checkpoint's row for the answer
`convert_ans(label2ans[r])` when the table has it, and zeros (weight and
bias) when it does not; the original reports the two counts, and so do we.
transformers' `resize_num_qa_labels` instead copies rows by index, which
gives every answer another answer's row unless the vocabularies agree.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, MutableMapping, Optional, Sequence

import numpy as np

from lxmert_jax.data.prepare.annotations import convert_ans

OUTPUT_LAYER = "answer_head/logit_fc_3/"
KERNEL, BIAS = OUTPUT_LAYER + "kernel", OUTPUT_LAYER + "bias"


@dataclasses.dataclass
class TransferReport:
  """How many fine-tuning answers found a row in the checkpoint's table."""

  transferred: int
  zeroed: int
  examples_zeroed: list[str]

  def __str__(self) -> str:
    line = (f"answer head: {self.transferred} of {self.transferred + self.zeroed} answers "
            f"transferred from the checkpoint's answer table, {self.zeroed} zeroed")
    if self.examples_zeroed:
      line += f" (e.g. {', '.join(repr(a) for a in self.examples_zeroed)})"
    return line


def has_answer_head(flat: Mapping[str, np.ndarray]) -> bool:
  """Whether flat parameters include an answer head's output layer."""
  return KERNEL in flat and BIAS in flat


def transfer_answer_rows(target: MutableMapping[str, np.ndarray],
                         source: Mapping[str, np.ndarray], source_answers: Sequence[str],
                         target_answers: Sequence[str], *, source_name: str) -> TransferReport:
  """Fills the target's answer output layer row by row from the source's, by answer string.

  Args:
    target: flat parameters being initialised (`answer_head/logit_fc_3/...`
      replaced in place).
    source: the checkpoint's flat parameters.
    source_answers: the answer of each row of the checkpoint's head.
    target_answers: the fine-tuning task's label2ans.
    source_name: the checkpoint, for errors.

  Raises:
    ValueError: the answer lists do not fit the heads they describe.
  """
  src_kernel, src_bias = np.asarray(source[KERNEL]), np.asarray(source[BIAS])
  if src_kernel.shape[-1] != len(source_answers):
    raise ValueError(f"{source_name}: its answer head has {src_kernel.shape[-1]} rows but its "
                     f"answer table lists {len(source_answers)} answers")
  kernel, bias = target[KERNEL], target[BIAS]
  if kernel.shape[-1] != len(target_answers):
    raise ValueError(f"the model's answer head has {kernel.shape[-1]} rows for "
                     f"{len(target_answers)} task answers")
  if src_kernel.shape[0] != kernel.shape[0]:
    raise ValueError(f"{source_name}: answer head input width {src_kernel.shape[0]} differs "
                     f"from the model's {kernel.shape[0]}")
  row_of = {answer: i for i, answer in enumerate(source_answers)}
  new_kernel = np.zeros_like(kernel)
  new_bias = np.zeros_like(bias)
  zeroed: list[str] = []
  for label, answer in enumerate(target_answers):
    row: Optional[int] = row_of.get(convert_ans(answer))
    if row is None:
      zeroed.append(answer)
      continue
    new_kernel[:, label] = src_kernel[:, row]
    new_bias[label] = src_bias[row]
  target[KERNEL], target[BIAS] = new_kernel, new_bias
  return TransferReport(transferred=len(target_answers) - len(zeroed), zeroed=len(zeroed),
                        examples_zeroed=zeroed[:5])
