"""LXMERT pre-training: the train step and the `train_and_evaluate` loop.

The step is one `jax.jit` with explicit shardings: the state in its sharded
layout (donated, so parameters and moments are updated in place) and the
batch split over the mesh's data axes. Dropout keys are `fold_in(base, step)`,
so a resumed run is bit-identical to an uninterrupted one.

The loop reads metrics one step late (the host fetches step s-1's metrics
after dispatching step s), so the device queue never drains for logging.
Before every save the pending metrics are checked: a non-finite loss stops the
run before its state can be written, leaving the last good checkpoint.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Callable, Iterator, Mapping, Optional

from absl import logging
import flax.linen as nn
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from lxmert_jax.training import checkpointing
from lxmert_jax.training import init_weights
from lxmert_jax.objectives import masked_decoding
from lxmert_jax.objectives import pretraining
from lxmert_jax.training import optimizers
from lxmert_jax.training import prefetch
from lxmert_jax import data as data_lib
from lxmert_jax.training import sharding as sharding_lib
from lxmert_jax.training import train_state as ts
from lxmert_jax.model.config import LxmertConfig
from lxmert_jax.model.task_models import LxmertForPreTraining
from lxmert_jax.training.metrics_writer import MetricsWriter, Throughput

Batch = Mapping[str, jax.Array]
MODEL_INPUTS = ("input_ids", "visual_feats", "visual_pos", "attention_mask",
                "token_type_ids", "visual_attention_mask")
FEATURE_KEYS = ("visual_feats", "feat_targets")


class NonFiniteLossError(RuntimeError):
  """The training loss became NaN or Inf; the run stopped without saving it."""


class DataNotFoundError(FileNotFoundError):
  """`config.data.dir` is missing or not a prepared pre-training dataset."""


class PretrainData:
  """The run's pre-training data: location, sizes, train and eval iterators.

  With `config.data.build_demo` and no prepared directory, the built-in
  synthetic corpus is generated first (into `data.dir`, or `WORKDIR/demo_data`
  when `data.dir` is empty).
  """

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    self.config = config
    cfg = config.data
    self.dir = cfg.dir or (os.path.join(workdir, "demo_data") if cfg.build_demo else "")
    if not self.dir:
      raise DataNotFoundError(_missing_data_message("(empty)"))
    if cfg.build_demo and not self._prepared():
      # One process builds; the others wait for it (they share the directory).
      if jax.process_index() == 0:
        _say(f"building the demo corpus ({cfg.demo_images} images) in {self.dir}")
        data_lib.build_demo_data(
            self.dir, num_images=cfg.demo_images, seed=cfg.demo_seed,
            feature_dim=cfg.demo_feature_dim, tasks=("pretrain",))
      multihost_utils.sync_global_devices("lxmert_jax demo data")
    if not self._prepared():
      raise DataNotFoundError(_missing_data_message(self.dir))
    self.info = data_lib.dataset_info(self.dir)
    num_train = self._num_examples(cfg.train_split)
    if self._num_examples(cfg.eval_split) < config.batch_size:
      logging.warning("eval split %s has fewer than batch_size=%d examples; evaluation "
                      "will be skipped", cfg.eval_split, config.batch_size)
    self.per_host_batch = config.batch_size // jax.process_count()
    if config.batch_size % jax.process_count():
      raise ValueError(f"batch_size {config.batch_size} is not divisible by the "
                       f"{jax.process_count()} processes")
    self.steps_per_epoch = num_train // config.batch_size
    if self.steps_per_epoch == 0:
      raise ValueError(f"batch_size {config.batch_size} exceeds the {num_train} training "
                       f"examples of {self.dir}")

  def _prepared(self) -> bool:
    try:
      data_lib.dataset_info(self.dir)
    except (FileNotFoundError, OSError, ValueError):
      return False
    return True

  def _num_examples(self, split: str) -> int:
    """Examples of a split or of a `+`-joined list of splits."""
    available = self.info["num_examples"]
    names = split.split("+")
    missing = [n for n in names if n not in available]
    if missing:
      raise DataNotFoundError(f"{self.dir} has no split(s) {missing} (from {split!r}); "
                              f"prepared splits: {sorted(available)}")
    return sum(available[n] for n in names)

  def model_fields(self) -> dict[str, int]:
    """LxmertConfig sizes dictated by the data."""
    return {k: self.info[k] for k in ("vocab_size", "num_qa_labels", "num_object_labels",
                                      "num_attr_labels", "visual_feat_dim")}

  def check_batch_layout(self, mesh: jax.sharding.Mesh, grad_accum_steps: int) -> None:
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    if self.config.batch_size % (shards * grad_accum_steps):
      raise ValueError(f"batch_size {self.config.batch_size} must be divisible by the "
                       f"{shards} data-parallel shards x grad_accum_steps {grad_accum_steps}")

  def _loader(self, split: str, *, shuffle: bool, num_epochs: Optional[int], seed: int):
    cfg = self.config.data
    return data_lib.make_pretrain_loader(
        self.dir, split, batch_size=self.per_host_batch, seed=seed,
        max_seq_length=cfg.max_seq_length, num_objects=cfg.num_objects, shuffle=shuffle,
        num_epochs=num_epochs, shard_index=jax.process_index(),
        shard_count=jax.process_count(), worker_count=cfg.worker_count, drop_remainder=True,
        feature_dtype=np.float16)

  def train_iterator(self) -> Iterator[Mapping[str, np.ndarray]]:
    """An endless, checkpointable iterator over shuffled training batches."""
    return iter(self._loader(self.config.data.train_split, shuffle=True, num_epochs=None,
                             seed=self.config.seed))

  def eval_batches(self) -> Iterator[Mapping[str, np.ndarray]]:
    """`eval_batches` batches of the eval split, the same ones every time.

    Shuffled with a fixed seed: records are stored image by image, so the
    first batches in file order would cover only a few images.
    """
    loader = self._loader(self.config.data.eval_split, shuffle=True, num_epochs=1,
                          seed=self.config.seed)
    limit = self.config.eval_batches
    for i, batch in enumerate(loader):
      if 0 < limit <= i:
        break
      yield batch


def _say(message: str) -> None:
  """Logs, and shows on the console of process 0."""
  logging.info("%s", message)
  if jax.process_index() == 0:
    print(message, file=sys.stderr, flush=True)


def _missing_data_message(data_dir: str) -> str:
  return (
      f"config.data.dir={data_dir} is not a prepared LXMERT pre-training dataset. "
      "Prepare the real data (the original TSV features and JSON annotations) with "
      "`python -m lxmert_jax.data.prepare pretrain --root RAW --out DIR` and pass "
      "--config.data.dir=DIR, or run the built-in synthetic corpus with "
      "`python -m lxmert_jax.main --config=configs/pretrain.py:demo --workdir=runs/demo`.")


def model_config_from(config: ml_collections.ConfigDict,
                      data_fields: Mapping[str, int]) -> LxmertConfig:
  """The LxmertConfig of a run: variant fields, dataset sizes, task switches.

  Args:
    config: the run config (`model` block and `pretraining.tasks`).
    data_fields: sizes the dataset dictates (vocab, label and feature sizes).
  """
  fields = dict(config.model.to_dict())
  fields.update(data_fields)
  fields.update(pretraining.model_task_switches(config.objective))
  try:
    return LxmertConfig(**fields)
  except TypeError as e:
    known = sorted(LxmertConfig.__dataclass_fields__)
    raise ValueError(f"config.model: {e}; known fields are {known}") from e


def features_as_float32(batch: Batch) -> Batch:
  """RoI features and their regression targets as float32, on the device.

  The loader sends them as float16, the precision they are stored in: half
  the bytes for the host to assemble and to copy to the device, and the cast
  is exact, so the model and the losses see the reference's float32 values.
  """
  return {**batch, **{k: jnp.asarray(batch[k], jnp.float32) for k in FEATURE_KEYS
                      if k in batch}}


def loss_fn(model: nn.Module, model_config: LxmertConfig, params: Any, batch: Batch,
            key: jax.Array, weights: Mapping[str, jax.Array], *, deterministic: bool,
            mlm_fraction: float = 0.0, feat_fraction: float = 0.0
            ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The weighted pre-training loss of a batch and its metrics (no gradients).

  Args:
    mlm_fraction, feat_fraction: when > 0, the masked-LM decoder (the
      largest matmul in the model) and the feature-regression decoder run
      only on up to this fraction of the B*T text positions / B*O boxes,
      gathered from the masked ones (`masked_decoding`). A batch with more
      masked rows falls back to decoding every row, so the loss is the same
      either way; `decode_fallback` in the metrics is 1 for such a batch.
  """
  batch = features_as_float32(batch)
  (loss, metrics), fallback = masked_decoding.pretraining_scores(
      model, params, {k: batch[k] for k in MODEL_INPUTS}, batch, key,
      lambda heads, labels: pretraining.compute(heads, labels, model_config, weights),
      deterministic=deterministic, mlm_fraction=mlm_fraction, feat_fraction=feat_fraction)
  return loss, dict(metrics, decode_fallback=fallback.astype(jnp.float32))


def _split_microbatches(batch: Batch, num: int) -> Batch:
  """[B, ...] -> [num, B/num, ...] keeping each device's rows on that device.

  Micro-batch i takes rows i, i+num, i+2·num, ...; a contiguous split would
  move rows between devices because the batch is sharded by contiguous blocks.
  """
  def split(x):
    x = x.reshape(x.shape[0] // num, num, *x.shape[1:])
    return jnp.swapaxes(x, 0, 1)
  return jax.tree.map(split, batch)


def grads_and_metrics(model: nn.Module, model_config: LxmertConfig, params: Any,
                      batch: Batch, key: jax.Array, weights: Mapping[str, jax.Array],
                      grad_accum_steps: int, nan_at_step: Optional[jax.Array] = None,
                      mlm_fraction: float = 0.0, feat_fraction: float = 0.0
                      ) -> tuple[Any, dict[str, jax.Array]]:
  """Gradients of the loss (averaged over micro-batches) and summed metrics.

  With `grad_accum_steps` = k > 1 the batch is processed as k micro-batches
  in a `lax.scan`; gradients and per-task losses are averaged and the
  accuracy counts summed, as accumulating k backward passes would.

  Args:
    nan_at_step: a boolean scalar; when true the loss is replaced by NaN.
      This is the `debug_nan_at_step` test hook for the non-finite guard.
    mlm_fraction, feat_fraction: see `loss_fn`.
  """
  def value_and_grad(p, b, k):
    b = features_as_float32(b)

    def score(heads, labels):
      loss, metrics = pretraining.compute(heads, labels, model_config, weights)
      if nan_at_step is not None:
        loss = jnp.where(nan_at_step, jnp.nan, loss)
        metrics = dict(metrics, loss=loss)
      return loss, metrics

    grads, metrics, fallback = masked_decoding.pretraining_grads(
        model, p, {name: b[name] for name in MODEL_INPUTS}, b, k, score,
        mlm_fraction=mlm_fraction, feat_fraction=feat_fraction)
    return grads, dict(metrics, decode_fallback=fallback.astype(jnp.float32))

  if grad_accum_steps == 1:
    return value_and_grad(params, batch, key)

  micro = _split_microbatches(batch, grad_accum_steps)
  zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
  shapes = jax.eval_shape(value_and_grad, params,
                          jax.tree.map(lambda x: x[0], micro), key)[1]
  metric_zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.float32), shapes)

  def body(carry, xs):
    grad_sum, metric_sum = carry
    i, b = xs
    grads, metrics = value_and_grad(params, b, jax.random.fold_in(key, i))
    grad_sum = jax.tree.map(lambda a, g: a + g.astype(jnp.float32), grad_sum, grads)
    metric_sum = jax.tree.map(lambda a, m: a + m.astype(jnp.float32), metric_sum, metrics)
    return (grad_sum, metric_sum), None

  (grad_sum, metric_sum), _ = jax.lax.scan(
      body, (zeros, metric_zeros), (jnp.arange(grad_accum_steps), micro))
  grads = jax.tree.map(lambda g, p: (g / grad_accum_steps).astype(p.dtype), grad_sum, params)
  metrics = {k: v if k.endswith(("_correct", "_count")) else v / grad_accum_steps
             for k, v in metric_sum.items()}
  return grads, metrics


def make_train_step(model: nn.Module, model_config: LxmertConfig,
                    tx: optax.GradientTransformation, schedule: optimizers.Schedule,
                    config: ml_collections.ConfigDict, steps_per_epoch: int,
                    state_shardings: ts.TrainState, mesh: jax.sharding.Mesh
                    ) -> Callable[[ts.TrainState, Batch], tuple[ts.TrainState, dict]]:
  """The jitted `(state, batch) -> (state, metrics)` update.

  The state is donated: its buffers are reused for the new state.
  """
  nan_step = config.debug_nan_at_step

  def train_step(state: ts.TrainState, batch: Batch):
    weights = pretraining.loss_weights(config.objective, state.step, steps_per_epoch)
    grads, metrics = grads_and_metrics(
        model, model_config, state.params, batch, state.step_key(), weights,
        config.grad_accum_steps, nan_at_step=state.step == nan_step if nan_step >= 0 else None,
        mlm_fraction=config.mlm_decode_fraction, feat_fraction=config.feat_decode_fraction)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics.update(grad_norm=optax.tree.norm(grads), lr=schedule(state.step))
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
    return new_state, metrics

  replicated = sharding_lib.replicated(mesh)
  return jax.jit(train_step, donate_argnums=0,
                 in_shardings=(state_shardings, sharding_lib.batch_sharding(mesh)),
                 out_shardings=(state_shardings, replicated))


def make_eval_step(model: nn.Module, model_config: LxmertConfig,
                   config: ml_collections.ConfigDict, steps_per_epoch: int,
                   state_shardings: ts.TrainState, mesh: jax.sharding.Mesh):
  """The jitted `(state, batch) -> metrics` evaluation (no dropout)."""

  def eval_step(state: ts.TrainState, batch: Batch):
    weights = pretraining.loss_weights(config.objective, state.step, steps_per_epoch)
    _, metrics = loss_fn(model, model_config, state.params, batch, state.step_key(),
                         weights, deterministic=True, mlm_fraction=config.mlm_decode_fraction,
                         feat_fraction=config.feat_decode_fraction)
    return metrics

  return jax.jit(eval_step, in_shardings=(state_shardings, sharding_lib.batch_sharding(mesh)),
                 out_shardings=sharding_lib.replicated(mesh))


# Per-box batch fields, moved together when a sentence gets another image.
IMAGE_KEYS = ("visual_feats", "visual_pos", "visual_attention_mask", "obj_labels", "obj_conf",
              "attr_labels", "attr_conf", "feat_targets", "feat_mask")
# Language-side accuracies that can only rise above their text-only level by
# using the image.
GROUNDED_TASKS = ("mlm", "qa")
OTHER_IMAGE = "other_image"


def with_other_images(batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """The batch with each sentence paired with the next example's image.

  Masked words and answers are often guessable from the sentence alone, so
  their accuracies say little about grounding; the drop from this control
  to the real pairing is what the model takes from the image.
  """
  return {k: np.roll(v, 1, axis=0) if k in IMAGE_KEYS else v for k, v in batch.items()}


def evaluate(eval_step, state: ts.TrainState, batches: Iterator[Mapping[str, np.ndarray]],
             batch_sharding: jax.NamedSharding) -> dict[str, float]:
  """Mean losses and accuracies over the evaluation batches.

  Also `eval/other_image/acc/{mlm,qa}`: the same accuracies with every
  sentence paired with another example's image (`with_other_images`).
  """
  sums: dict[str, float] = {}
  control: dict[str, float] = {}
  num = 0
  for host_batch in batches:
    for target, batch in ((sums, host_batch), (control, with_other_images(host_batch))):
      metrics = eval_step(state, sharding_lib.global_batch(batch, batch_sharding))
      pretraining.add_to(target, jax.device_get(metrics))
    num += 1
  if not num:
    return {}
  out = {f"eval/{k}": v for k, v in pretraining.summarize(sums, num).items()}
  for key, value in pretraining.summarize(control, num).items():
    if key.startswith("acc/") and key[4:] in GROUNDED_TASKS:
      out[f"eval/{OTHER_IMAGE}/{key}"] = value
  return out


def format_image_use(metrics: Mapping[str, float]) -> str:
  """`mlm acc 0.62 (0.57 with another image) | qa ...` for the final summary."""
  parts = []
  for task in GROUNDED_TASKS:
    own, other = metrics.get(f"eval/acc/{task}"), metrics.get(f"eval/{OTHER_IMAGE}/acc/{task}")
    if own is not None and other is not None:
      parts.append(f"{task} acc {own:.3f} ({other:.3f} with another example's image)")
  return " | ".join(parts) or "(none)"


class _LoopLogger:
  """Accumulates host metrics between logs and checks each step for NaN/Inf."""

  def __init__(self, writer: MetricsWriter, log_every: int, global_batch: int,
               total_steps: int):
    self.writer, self.log_every, self.global_batch = writer, log_every, global_batch
    self.total_steps = total_steps
    self.sums: dict[str, float] = {}
    self.num = 0
    self.throughput = Throughput()
    self.first: dict[str, float] = {}
    self.last: dict[str, float] = {}

  def add(self, step: int, device_metrics: Any) -> None:
    """Takes the metrics of the update that produced state `step`.

    Raises:
      NonFiniteLossError: the update's loss or gradient norm is NaN/Inf, so
        the state it produced must not be saved.
    """
    host = jax.device_get(device_metrics)
    for key in ("loss", "grad_norm"):
      value = float(host[key])
      if not np.isfinite(value):
        raise NonFiniteLossError(f"non-finite training {key} ({value}) at step {step - 1}")
    pretraining.add_to(self.sums, host)
    self.num += 1
    if step % self.log_every == 0 or step == self.total_steps:
      self.flush(step)

  def flush(self, step: int) -> None:
    if not self.num:
      return
    summary = pretraining.summarize(self.sums, self.num)
    rate = self.throughput.rate(self.num * self.global_batch)
    row = {f"train/{k}": v for k, v in summary.items()}
    row["train/examples_per_sec"] = rate
    self.writer.write_scalars(step, row)
    self.writer.progress(step, {"loss": summary["loss"], "ex/s": f"{rate:.0f}"})
    self.writer.log(f"step {step} train: {format_metrics(row, 'train')} | "
                    f"{rate:.0f} examples/s")
    self.first = self.first or row
    self.last = row
    self.sums, self.num = {}, 0


def format_metrics(metrics: Mapping[str, float], prefix: str,
                   chance: Optional[Mapping[str, float]] = None) -> str:
  """`loss 6.02 | mlm 1.09 acc 0.59 | matched ...` for one prefix (train/eval).

  Args:
    metrics: rows such as `{prefix}/loss/mlm`, `{prefix}/acc/mlm`.
    prefix: "train" or "eval".
    chance: when given, each accuracy is followed by the chance level.
  """
  if f"{prefix}/loss" not in metrics:
    return "(none)"
  parts = [f"loss {metrics[f'{prefix}/loss']:.3f}"]
  for task in pretraining.TASKS:
    loss, acc = metrics.get(f"{prefix}/loss/{task}"), metrics.get(f"{prefix}/acc/{task}")
    if loss is None and acc is None:
      continue
    item = task if loss is None else f"{task} {loss:.3f}"
    if acc is not None:
      item += f" acc {acc:.3f}" + (f" (chance {chance[task]:.2g})" if chance else "")
    parts.append(item)
  return " | ".join(parts)


def _restore_or_init(config: ml_collections.ConfigDict, ckpt: checkpointing.Checkpointer,
                     model: nn.Module, model_config: LxmertConfig,
                     tx: optax.GradientTransformation, abstract: ts.TrainState,
                     shardings: ts.TrainState, train_iter: Any) -> ts.TrainState:
  """The latest checkpoint of the work directory, else a new state per `config.init`."""
  latest = ckpt.latest_step()
  if latest is not None:
    return ckpt.restore(latest, ts.with_shardings(abstract, shardings), train_iter)
  params, _ = init_weights.initial_params(config.init, model, model_config,
                                          ts.seed_keys(config.seed)[0])
  return ts.create_train_state(model, model_config, tx, shardings, config.seed, params)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Pre-trains LXMERT as `config` says, checkpointing under `workdir`.

  Restarting with the same `workdir` resumes from the latest complete
  checkpoint (state, rng and data position). SIGTERM, or reaching
  `config.steps_per_run` updates in this invocation, saves at the next step
  boundary and returns normally.

  Returns:
    The last logged training metrics and the last evaluation metrics.

  Raises:
    NonFiniteLossError: the loss became NaN/Inf (nothing is saved after it).
    DataNotFoundError: `config.data.dir` is missing or unprepared.
  """
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  data = PretrainData(config, workdir)
  model_config = model_config_from(config, data.model_fields())
  model = LxmertForPreTraining(model_config)
  mesh = sharding_lib.make_mesh(config.mesh)
  rules = sharding_lib.logical_rules(config.sharding_rules)
  data.check_batch_layout(mesh, config.grad_accum_steps)

  steps_per_epoch = data.steps_per_epoch
  total_steps = (config.num_train_steps if config.num_train_steps > 0
                 else config.num_epochs * steps_per_epoch)
  tx, schedule = optimizers.make_optimizer(config.optimizer, total_steps)
  abstract, shardings = ts.state_shardings(model, model_config, tx, mesh, rules)
  ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"), config.ckpt)
  batch_sh = sharding_lib.batch_sharding(mesh)
  # Checkpoints save this iterator's position: the batches handed to the loop.
  train_iter = prefetch.DevicePrefetcher(
      data.train_iterator(), lambda b: sharding_lib.global_batch(b, batch_sh),
      size=config.data.device_prefetch)
  # Outside the mesh context: see `create_train_state`.
  state = _restore_or_init(config, ckpt, model, model_config, tx, abstract, shardings,
                           train_iter)
  start = int(jax.device_get(state.step))
  if jax.process_index() == 0:
    model_config.to_json_file(os.path.join(workdir, "model_config.json"),
                              architectures=["LxmertForPreTraining"])

  train_step = make_train_step(model, model_config, tx, schedule, config, steps_per_epoch,
                               shardings, mesh)
  eval_step = make_eval_step(model, model_config, config, steps_per_epoch, shardings, mesh)
  writer = MetricsWriter(workdir, total_steps, start, progress_bar=config.progress_bar)
  writer.log(f"{sharding_lib.describe(mesh)}; global batch {config.batch_size}; model "
             f"{ts.count_params(state.params):,} parameters; {total_steps} steps "
             f"({steps_per_epoch} per epoch), starting at step {start}")
  chance = pretraining.chance_accuracy(model_config)
  logger = _LoopLogger(writer, config.log_every_steps, config.batch_size, total_steps)
  preempt = checkpointing.PreemptionFlag()
  eval_metrics: dict[str, float] = {}
  t0 = time.time()
  step = start
  try:
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
      pending = None
      while step < total_steps:
        state, metrics = train_step(state, next(train_iter))
        step += 1
        # Read the previous step's metrics while this one runs.
        if pending is not None:
          logger.add(*pending)
        pending = (step, metrics)
        stop = (preempt.is_set() or ckpt.reached_preemption(step)
                or 0 < config.steps_per_run <= step - start)
        last = step == total_steps
        do_eval = last or (config.eval_every_steps > 0 and step % config.eval_every_steps == 0)
        if stop or do_eval or ckpt.should_save(step):
          logger.add(*pending)  # Never save a state that has not been checked.
          pending = None
          if do_eval:
            eval_metrics = evaluate(eval_step, state, data.eval_batches(), batch_sh)
            writer.write_scalars(step, eval_metrics)
            writer.log(f"step {step} eval:  {format_metrics(eval_metrics, 'eval')}")
          # Evaluated states are saved too, as candidates for the best checkpoint.
          ckpt.save(step, state, train_iter, metrics=(eval_metrics or None) if do_eval else None,
                    force=stop or do_eval)
        if stop:
          logger.flush(step)
          writer.log(f"stopping at step {step} of {total_steps}; checkpoint saved, rerun "
                     "with the same workdir to resume")
          break
    writer.log(f"done: step {step}/{total_steps} in {time.time() - t0:.1f}s\n"
               f"  first train: {format_metrics(logger.first, 'train', chance)}\n"
               f"  last train:  {format_metrics(logger.last, 'train', chance)}\n"
               f"  last eval:   {format_metrics(eval_metrics, 'eval', chance)}\n"
               f"  image use:   {format_image_use(eval_metrics)}\n"
               f"  files: {workdir}/metrics.jsonl, {workdir}/tensorboard, "
               f"{workdir}/loss_curves.png, {workdir}/checkpoints")
  except NonFiniteLossError as e:
    ckpt.wait_until_finished()
    last_good = ckpt.latest_step()
    raise NonFiniteLossError(
        f"{e}; stopping. Last good checkpoint: "
        f"{'none' if last_good is None else f'step {last_good}'} in {ckpt.directory}") from e
  finally:
    train_iter.close()
    ckpt.close()
    preempt.restore_handler()
    writer.close()
  return {**logger.last, **eval_metrics}
