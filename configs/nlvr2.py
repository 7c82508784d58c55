r"""NLVR2 fine-tuning, as the original: train, evaluated on valid (the dev set).

    --config=configs/nlvr2.py --config.data.dir=DATA --config.init.path=PRETRAINED
    --config=configs/nlvr2.py:demo   the built-in corpus, a few CPU minutes
    --config=configs/nlvr2.py:tiny   seconds; used by the tests

Only the encoder is loaded from the pre-trained model (the original's
--loadLXMERT); the classifier over the two images' pooled outputs starts
fresh. See `configs/finetune.py` for the shared recipe.
"""

import ml_collections

from configs import finetune


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  return finetune.get_config("nlvr2", arg, lr=5e-5, train_split="train", eval_split="valid",
                             best_metric="eval/accuracy", demo_images=8000)
