r"""GQA fine-tuning, as the original: train + valid (balanced), evaluated on testdev.

    --config=configs/gqa.py --config.data.dir=DATA --config.init.path=PRETRAINED
    --config=configs/gqa.py:demo   the built-in corpus, a few CPU minutes
    --config=configs/gqa.py:tiny   seconds; used by the tests

The original trains on valid too, so testdev is the dev split (and the
best checkpoint is chosen on it, as the original's BEST.pth is). Pass
`--config.eval.gqa_questions=testdev_balanced_questions.json` for the
official evaluator's breakdown. See `configs/finetune.py` for the recipe.
"""

import ml_collections

from configs import finetune


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  return finetune.get_config("gqa", arg, lr=1e-5, train_split="train+valid",
                             eval_split="testdev", best_metric="eval/accuracy",
                             demo_images=4000, demo_epochs=5)
