r"""What the VQA, GQA and NLVR2 fine-tuning configs share: the original recipe.

The released code fine-tunes every task with batch 32 for 4 epochs, BertAdam
with 10% linear warm-up then linear decay, gradient clipping at norm 5.0,
dropout 0.1 and seed 9595 (`run/{vqa,gqa,nlvr2}_finetune.bash`); only the
learning rate and the splits differ. Each task's config calls `get_config`
here with its own settings. Variants:

    base   the recipe on the prepared benchmark data (`--config.data.dir=...`)
    demo   a small model on the built-in corpus's task files; a few CPU minutes
    tiny   seconds; used by the tests
"""

from __future__ import annotations

import ml_collections

from configs import common


def get_config(task: str, arg: str | None, *, lr: float, train_split: str,
               eval_split: str, best_metric: str, demo_images: int = 2000,
               demo_epochs: int = 4) -> ml_collections.ConfigDict:
  """The fine-tuning config of `task` ("vqa", "gqa" or "nlvr2") for a variant.

  `demo_images` and `demo_epochs` size the `demo` variant (the built-in corpus
  makes fewer GQA questions and NLVR2 pairs per image than VQA questions).
  """
  arg = common.parse_arg(arg, variant="base")
  if arg.variant not in ("base", "demo", "tiny"):
    raise ValueError(f"configs/{task}.py: unknown variant {arg.variant!r}; expected 'base', "
                     "'demo' or 'tiny'")
  config = ml_collections.ConfigDict()
  config.task = task  # lxmert_jax.tasks: what the trainer trains.
  config.seed = 9595

  # --- Data -----------------------------------------------------------------
  config.data = ml_collections.ConfigDict()
  # A directory prepared by `python -m lxmert_jax.data.prepare <task>`.
  config.data.dir = ""
  # Generate the built-in corpus's task files when `dir` holds no prepared
  # data (into `dir`, or WORKDIR/demo_data when `dir` is empty).
  config.data.build_demo = False
  config.data.demo_images = 0
  config.data.demo_seed = 0
  config.data.demo_feature_dim = 256
  config.data.demo_max_objects = 5  # Objects per scene: 2 to this.
  # "relations" or "inventory" (`CorpusConfig.caption_style`).
  config.data.demo_captions = "relations"
  config.data.train_split = train_split
  config.data.eval_split = eval_split
  config.data.max_seq_length = 20
  config.data.num_objects = 36
  config.data.worker_count = 0
  config.data.device_prefetch = 2

  # --- Model ----------------------------------------------------------------
  config.model = common.model_variant("base")

  # --- Optimisation -----------------------------------------------------------
  config.batch_size = 32
  config.eval_batch_size = 256  # Evaluation batches (the whole split is scored).
  config.num_epochs = 4
  config.num_train_steps = -1
  config.steps_per_run = -1
  config.grad_accum_steps = 1
  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.name = "bert_adam"
  config.optimizer.lr = lr
  config.optimizer.warmup = 0.1
  config.optimizer.b1 = 0.9
  config.optimizer.b2 = 0.999
  config.optimizer.eps = 1e-6
  config.optimizer.weight_decay = 0.01
  config.optimizer.clip_norm = 5.0

  # Initial weights: a pre-trained LXMERT (`--config.init.path=` a run
  # directory, an lxmert_jax checkpoint or a transformers directory). `step`
  # picks a run directory's checkpoint; `answers` is the checkpoint's answer
  # table when it has no answers.json (e.g. the original all_ans.json);
  # `encoder_only` loads the encoder alone (NLVR2, the original's --loadLXMERT).
  config.init = ml_collections.ConfigDict(dict(
      mode="lxmert", path="", step="best", answers="", encoder_only=task == "nlvr2"))

  # --- Devices ----------------------------------------------------------------
  config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  config.sharding_rules = common.SHARDING_RULES

  # --- Checkpoints, evaluation, logging -----------------------------------------
  config.ckpt = ml_collections.ConfigDict()
  config.ckpt.every_steps = 2000
  config.ckpt.keep = 1
  config.ckpt.keep_best = 1  # The best by the dev metric (the original's BEST.pth).
  config.ckpt.best_metric = best_metric
  config.ckpt.best_mode = "max"
  config.ckpt.async_save = True
  config.eval_every_epochs = 1  # The whole dev split after every epoch.
  config.eval_every_steps = 0
  # Official evaluation files, when the dev split has them: VQA's
  # v2_mscoco_val2014_annotations.json; GQA's *_balanced_questions.json and
  # (for validity and plausibility) *_choices.json.
  config.eval = ml_collections.ConfigDict(dict(vqa_annotations="", gqa_questions="",
                                               gqa_choices=""))
  config.log_every_steps = 100
  config.progress_bar = True

  if arg.variant == "demo":
    _demo(config, demo_images, demo_epochs)
  elif arg.variant == "tiny":
    _tiny(config)
  return config


def _synthetic(config: ml_collections.ConfigDict, images: int) -> None:
  config.data.build_demo = True
  config.data.demo_images = images
  config.data.num_objects = 10
  config.data.device_prefetch = 0
  # From scratch unless a pre-trained demo model is given with --config.init.path.
  config.init.mode = "scratch"


def _demo(config: ml_collections.ConfigDict, images: int, epochs: int) -> None:
  _synthetic(config, images=images)
  config.model = common.model_variant("mini")
  config.num_epochs = epochs
  config.optimizer.lr = 1e-3
  config.eval_batch_size = 128
  config.ckpt.every_steps = 1000
  config.log_every_steps = 25


def _tiny(config: ml_collections.ConfigDict) -> None:
  _synthetic(config, images=48)
  config.data.demo_feature_dim = 32
  config.model = common.model_variant("tiny")
  config.batch_size = 8
  config.eval_batch_size = 16
  config.num_epochs = 2
  config.optimizer.lr = 1e-3
  config.ckpt.every_steps = 1000
  config.ckpt.async_save = False
  config.log_every_steps = 1
  config.progress_bar = False
