r"""LXMERT pre-training configs.

    --config=configs/pretrain.py        the paper's setting (`base`)
    --config=configs/pretrain.py:demo   a small model on the built-in synthetic
                                        corpus; a few minutes on a laptop CPU
    --config=configs/pretrain.py:tiny   seconds; used by the tests

Any field can be overridden on the command line, e.g.
`--config.optimizer.lr=5e-5 --config.mesh.fsdp=4`; a misspelt field is an
error (the config is locked).
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The config of a variant: `base` (default), `demo` or `tiny`."""
  arg = common.parse_arg(arg, variant="base")
  if arg.variant not in ("base", "demo", "tiny"):
    raise ValueError(f"configs/pretrain.py: unknown variant {arg.variant!r}; expected "
                     "'base', 'demo' or 'tiny'")
  config = ml_collections.ConfigDict()
  config.task = "pretraining"  # lxmert_jax.tasks: what the trainer trains.
  config.seed = 9595  # The reference's seed.

  # --- Data -----------------------------------------------------------------
  config.data = ml_collections.ConfigDict()
  # A directory prepared by `python -m lxmert_jax.data.prepare`.
  config.data.dir = ""
  # Generate the synthetic demo corpus when `dir` holds no prepared data
  # (into `dir`, or WORKDIR/demo_data when `dir` is empty).
  config.data.build_demo = False
  config.data.demo_images = 0
  config.data.demo_seed = 0
  config.data.demo_feature_dim = 256  # F of the synthetic RoI features.
  config.data.demo_max_objects = 5  # Objects per scene: 2 to this.
  # "relations" or "inventory" (`CorpusConfig.caption_style`).
  config.data.demo_captions = "relations"
  config.data.train_split = "mscoco_train+mscoco_nominival+vgnococo"
  config.data.eval_split = "mscoco_minival"
  config.data.max_seq_length = 20  # [CLS] + 18 word-pieces + [SEP].
  config.data.num_objects = 36
  config.data.worker_count = 0  # grain worker processes (0: in the main process).
  # Batches read and copied to the devices ahead of the step, on a thread, so
  # loading and the transfer overlap with compute (0: in the loop, no overlap).
  config.data.device_prefetch = 2

  # --- Model ----------------------------------------------------------------
  # LxmertConfig fields; vocabulary, label and feature sizes come from the data.
  # Mixed precision: --config.model.dtype=bfloat16 computes in bf16 while
  # parameters, gradients and optimiser moments stay float32 (param_dtype).
  config.model = common.model_variant("base")

  # --- Objective ------------------------------------------------------------
  config.objective = ml_collections.ConfigDict()
  # Per-task switches; a task switched off has no head and no loss.
  config.objective.tasks = ml_collections.ConfigDict(
      dict(mlm=True, matched=True, obj=True, attr=True, feat=True, qa=True))
  # Per-task loss weights (the visual losses are also scaled by the model's
  # visual_loss_normalizer).
  config.objective.weights = ml_collections.ConfigDict(
      dict(mlm=1.0, matched=1.0, obj=1.0, attr=1.0, feat=1.0, qa=2.0))
  # The QA loss is off before this epoch. The paper's model: no QA for the
  # first 10 of 20 epochs, then QA with weight 2. The released code: start 0,
  # weight 1.
  config.objective.qa_start_epoch = 10

  # --- Optimisation -----------------------------------------------------------
  config.batch_size = 256  # Global, over all processes.
  config.num_epochs = 20
  config.num_train_steps = -1  # > 0 overrides num_epochs.
  # Save and exit after this many updates in one invocation (-1: run to the
  # end); for job slots with a time limit. Rerunning resumes.
  config.steps_per_run = -1
  config.grad_accum_steps = 1  # Micro-batches per update (batch_size / this each).
  # Decode masked-LM logits only at up to this fraction of the text positions
  # (the labelled ones; ~15% are). Same loss, a fraction of the largest
  # matmul; batches with more labels fall back to all positions. 0: off.
  config.mlm_decode_fraction = 0.25
  # The same for the feature-regression decoder and the boxes (15% masked).
  config.feat_decode_fraction = 0.25
  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.name = "bert_adam"  # Or "adamw" (bias-corrected, decay masked).
  config.optimizer.lr = 1e-4
  config.optimizer.warmup = 0.05  # Fraction of all updates.
  config.optimizer.b1 = 0.9
  config.optimizer.b2 = 0.999
  config.optimizer.eps = 1e-6
  config.optimizer.weight_decay = 0.01
  config.optimizer.clip_norm = 1.0  # Global-norm clipping; <= 0 turns it off.

  # Initial weights: "scratch" (the paper's), "lxmert" or "bert" from `path`.
  config.init = ml_collections.ConfigDict(dict(mode="scratch", path=""))

  # --- Devices ----------------------------------------------------------------
  # Mesh sizes; one may be -1 (all remaining devices).
  config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  config.sharding_rules = common.SHARDING_RULES

  # --- Checkpoints, evaluation, logging -----------------------------------------
  config.ckpt = ml_collections.ConfigDict()
  config.ckpt.every_steps = 2000
  config.ckpt.keep = 2  # The latest checkpoints to keep...
  config.ckpt.keep_best = 1  # ...plus the best by best_metric (0: none).
  config.ckpt.best_metric = "eval/loss"
  config.ckpt.best_mode = "min"
  config.ckpt.async_save = True
  config.eval_every_steps = 5000  # 0: never (the final step is always evaluated).
  config.eval_batches = 10  # Batches of the eval split per evaluation (0: all).
  config.log_every_steps = 100
  config.progress_bar = True

  if arg.variant == "demo":
    _demo(config)
  elif arg.variant == "tiny":
    _tiny(config)
  return config


def _synthetic(config: ml_collections.ConfigDict, images: int) -> None:
  config.data.build_demo = True
  config.data.demo_images = images
  config.data.num_objects = 10
  config.data.max_seq_length = 20
  # CPU runs: the batches are already where the step runs, and a reading
  # thread would compete with the step for the cores.
  config.data.device_prefetch = 0
  config.objective.qa_start_epoch = 0
  config.objective.weights.qa = 1.0


def _demo(config: ml_collections.ConfigDict) -> None:
  _synthetic(config, images=400)
  # The init's std is 1/sqrt(width), 0.125 for 64 (BERT's 0.02 is sized for
  # 768): from 0.02 the words and the boxes interact too weakly for masked-LM
  # and QA to learn to read the image within a demo (README, "A grounded
  # demo"). With the wider init the learning rate is lower and the schedule
  # longer than a 0.02 model would need.
  config.model = common.model_variant("mini", hidden_dropout_prob=0.0,
                                      attention_probs_dropout_prob=0.0,
                                      initializer_range=0.125)
  config.batch_size = 32
  config.num_epochs = 16
  config.optimizer.lr = 3e-4
  config.optimizer.warmup = 0.05
  config.ckpt.every_steps = 400
  config.eval_every_steps = 400
  # The whole minival split (992 pairs of 40 images): the image-use
  # comparison needs more than a few batches to rise above noise.
  config.eval_batches = 0
  config.log_every_steps = 25


def _tiny(config: ml_collections.ConfigDict) -> None:
  _synthetic(config, images=24)
  config.data.demo_feature_dim = 32
  config.model = common.model_variant("tiny")
  config.batch_size = 8
  config.num_epochs = 1
  config.num_train_steps = 6
  config.optimizer.lr = 1e-3
  config.optimizer.warmup = 0.2
  config.ckpt.every_steps = 3
  config.ckpt.async_save = False
  config.eval_every_steps = 3
  config.eval_batches = 1
  config.log_every_steps = 1
  config.progress_bar = False
