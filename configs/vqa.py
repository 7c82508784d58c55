r"""VQA v2 fine-tuning, as the original: train + nominival, evaluated on minival.

    --config=configs/vqa.py --config.data.dir=DATA --config.init.path=PRETRAINED
    --config=configs/vqa.py:demo   the built-in corpus, a few CPU minutes
    --config=configs/vqa.py:tiny   seconds; used by the tests

The best checkpoint is kept by LXMERT's soft score on minival (what the
original code selects BEST.pth by); pass
`--config.eval.vqa_annotations=v2_mscoco_val2014_annotations.json` for the
official accuracy as well. See `configs/finetune.py` for the shared recipe.
"""

import ml_collections

from configs import finetune


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  return finetune.get_config("vqa", arg, lr=5e-5, train_split="train+nominival",
                             eval_split="minival", best_metric="eval/soft_score")
