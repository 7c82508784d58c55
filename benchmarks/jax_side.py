"""Our side: the trainer's own train step and the VQA forward, timed; the max-batch search.

The train step is `lxmert_jax.training.step.make_train_step`, built as
`lxmert_jax.main` builds it: the pre-training config (`configs/pretrain.py`),
the pre-training task (`lxmert_jax.tasks.pretraining`), the configured
optimiser (`training.optimizers.make_optimizer`), the mesh over the devices,
the sharded state and donation. Only the data differ: synthetic batches of
the loader's shapes, placed on the device before timing. The run config sets
the optimiser to the training config's `adamw` option (AdamW after
global-norm clipping, the update the PyTorch peer runs), unit task weights
(transformers sums the losses unweighted) and the variant's decode fractions.
None of this imports grain or tensorflow-datasets (the task's data side is
loaded only by `tasks.build`); ml_collections is needed for the config.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from benchmarks import workload
from benchmarks.workload import Job, Probe
from configs import pretrain
from lxmert_jax.objectives import masked_decoding
from lxmert_jax.tasks import pretraining as pretraining_task
from lxmert_jax.training import optimizers
from lxmert_jax.training import sharding as sharding_lib
from lxmert_jax.training import step as step_lib
from lxmert_jax.training import train_state as ts
from lxmert_jax.model.config import LxmertConfig
from lxmert_jax.model.task_models import LxmertForPreTraining, LxmertForQuestionAnswering
from lxmert_jax.model.encoders import dummy_inputs


@functools.lru_cache(maxsize=None)
def cudnn_attention_problem(tiny: bool, seq_len: int, num_objects: int) -> Optional[str]:
  """Why our train step cannot use cuDNN attention here, or None if it can.

  Traces (does not run) the gradient of the bf16 model with
  `attention_implementation="cudnn"` on the benchmark's inputs, text padding
  mask included: cuDNN's constraints on dtypes, head size, sequence lengths
  and mask shapes are all checked while tracing.
  """
  config = LxmertConfig(**workload.model_fields(tiny), dtype="bfloat16",
                        attention_implementation="cudnn")
  model = LxmertForPreTraining(config)
  inputs = {k: v for k, v in dummy_inputs(config, 2, seq_len, num_objects).items()
            if k in workload.MODEL_INPUTS}

  def loss(params):
    out = model.apply({"params": params}, **inputs, deterministic=True)
    return out.language_output.astype(jnp.float32).sum()

  try:
    params = nn.unbox(jax.eval_shape(lambda: model.init(jax.random.key(0), **inputs))["params"])
    jax.eval_shape(jax.grad(loss), params)
  except Exception as e:  # pylint: disable=broad-except
    workload.log(f"cuDNN attention cannot run this model: {type(e).__name__}: {e}")
    return f"{type(e).__name__}: {e}"
  return None


def resolve_attention(job: Job, dtype: Optional[str] = None) -> tuple[str, Optional[str]]:
  """(attention implementation, why `auto` did not pick cuDNN) for `job`.

  `auto` is cuDNN's fused attention where it can run our model (on GPU, in
  bf16), else XLA's `dot_product_attention`.
  """
  dtype = dtype or job.dtype
  if job.variant.attention != "auto":
    return job.variant.attention, None
  if jax.devices()[0].platform != "gpu" or dtype != "bf16":
    return "xla", None
  problem = cudnn_attention_problem(job.tiny, job.seq_len, job.num_objects)
  if problem is not None:
    return "xla", f"cuDNN attention unavailable: {problem}"
  return "cudnn", None


def our_config(job: Job, *, head: str = "pretraining") -> LxmertConfig:
  """The model config of a job: bf16 or fp32 compute, fp32 parameters."""
  fields = workload.model_fields(job.tiny)
  if head == "qa":
    fields["num_qa_labels"] = workload.vqa_answers(job.tiny)
  return LxmertConfig(**fields, dtype="bfloat16" if job.dtype == "bf16" else "float32",
                      attention_implementation=resolve_attention(job)[0])


def run_config(job: Job) -> ml_collections.ConfigDict:
  """The training config the benchmark's step is built from (see the module docstring)."""
  config = pretrain.get_config()
  config.optimizer.update(dict(name="adamw", lr=workload.LEARNING_RATE, eps=workload.ADAM_EPS,
                               weight_decay=workload.WEIGHT_DECAY, clip_norm=workload.CLIP_NORM))
  config.objective.qa_start_epoch = 0
  config.objective.weights.update({task: 1.0 for task in config.objective.weights})
  config.mlm_decode_fraction = job.variant.mlm_fraction
  config.feat_decode_fraction = job.variant.feat_fraction
  config.seed = job.seed
  return config


@dataclasses.dataclass
class TrainStep:
  """The trainer's step for a job, and what it needs to run."""

  step: Callable
  mesh: jax.sharding.Mesh
  rules: sharding_lib.Rules
  task: pretraining_task.PretrainingTask
  state: ts.TrainState


def build_train_step(job: Job) -> TrainStep:
  """The trainer's jitted step for `job` and a fresh sharded state."""
  config = run_config(job)
  model_config = our_config(job)
  mesh = sharding_lib.make_mesh(config.mesh)
  rules = sharding_lib.logical_rules(config.sharding_rules)
  task = pretraining_task.PretrainingTask(config, model_config, steps_per_epoch=1 << 30,
                                          num_groups=step_lib.batch_shards(mesh))
  tx, schedule = optimizers.make_optimizer(config.optimizer, total_steps=1 << 20)
  _, shardings = ts.state_shardings(task.model, tx, mesh, rules)
  state = ts.create_train_state(task.model, tx, shardings, config.seed,
                                rules=rules)
  step = step_lib.make_train_step(task, tx, schedule, shardings, mesh,
                                  config.grad_accum_steps, donate=job.variant.donate)
  return TrainStep(step, mesh, rules, task, state)


def compiled_stats(compiled: Any, batch: int) -> dict[str, Optional[float]]:
  """XLA's own FLOP count and its static memory need (arguments + outputs - aliased + temporaries)."""
  out: dict[str, Optional[float]] = {"xla_flops_per_example": None, "xla_memory_bytes": None}
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  if cost and cost.get("flops"):
    out["xla_flops_per_example"] = float(cost["flops"]) / batch
  mem = compiled.memory_analysis()
  if mem is not None:
    out["xla_memory_bytes"] = float(mem.argument_size_in_bytes + mem.output_size_in_bytes
                                    - mem.alias_size_in_bytes + mem.temp_size_in_bytes)
  return out


def _memory_stat(name: str) -> Optional[int]:
  stats = jax.devices()[0].memory_stats()
  return int(stats[name]) if stats and stats.get(name) else None


def batch_spec(config: LxmertConfig, batch: int, seq_len: int,
               num_objects: int) -> dict[str, jax.ShapeDtypeStruct]:
  """Shapes and dtypes of `workload.synthetic_batch`, to compile without the data."""
  small = workload.synthetic_batch(config, 2, seq_len, num_objects, seed=0)
  return {k: jax.ShapeDtypeStruct((batch,) + v.shape[1:], v.dtype) for k, v in small.items()}


def device_batches(config: LxmertConfig, job: Job, batch: int, count: int,
                   num_answers: Optional[int] = None) -> list[dict[str, jax.Array]]:
  return [jax.device_put(workload.synthetic_batch(config, batch, job.seq_len, job.num_objects,
                                                  job.seed + 100 + i, num_answers))
          for i in range(count)]


def decoded_rows(job: Job, batch: int) -> dict[str, int]:
  """Rows the MLM and feature-regression decoders run on per step (unless they fall back)."""
  text, boxes = batch * job.seq_len, batch * job.num_objects
  return dict(mlm_positions=masked_decoding.capacity(job.variant.mlm_fraction, text) or text,
              feat_boxes=masked_decoding.capacity(job.variant.feat_fraction, boxes) or boxes)


def compile_train_step(job: Job, batch: int) -> tuple[Any, LxmertConfig, Any, float]:
  """(compiled step, config, fresh state, compile seconds) at `batch`."""
  jax.config.update("jax_default_prng_impl", job.variant.prng)
  built = build_train_step(job)
  config = built.task.model_config
  spec = batch_spec(config, batch, job.seq_len, job.num_objects)
  start = time.perf_counter()
  with jax.set_mesh(built.mesh), nn.logical_axis_rules(built.rules):
    compiled = built.step.lower(built.state, spec).compile()
  return compiled, config, built.state, time.perf_counter() - start


def bench_train(job: Job, peak: Optional[float]) -> dict[str, Any]:
  """Times our pre-training step at `job.batch`."""
  compiled, config, state, compile_s = compile_train_step(job, job.batch)
  batches = device_batches(config, job, job.batch, job.num_batches)
  holder = {"state": state}

  def step(i: int):
    holder["state"], metrics = compiled(holder["state"], batches[i % len(batches)])
    return metrics

  timing = workload.time_steps(step, jax.block_until_ready, job.warmup, job.steps)
  last = jax.device_get(step(0))
  if not np.isfinite(float(last["loss"])):
    raise RuntimeError(f"non-finite loss {float(last['loss'])}")
  flops = workload.train_flops_per_example(config, job.seq_len, job.num_objects)
  return dict(timing, **workload.throughput(timing, job.batch, flops, peak),
              **compiled_stats(compiled, job.batch), compile_s=compile_s,
              peak_bytes=_memory_stat("peak_bytes_in_use"), loss=float(last["loss"]),
              attention=config.attention_implementation,
              attention_note=resolve_attention(job)[1],
              **decoded_rows(job, job.batch), decode_fallback=bool(last["decode_fallback"]))


def bench_infer(job: Job, peak: Optional[float]) -> dict[str, Any]:
  """Times our VQA forward (`LxmertForQuestionAnswering`, no dropout) at `job.infer_batch`."""
  config = our_config(job, head="qa")
  model = LxmertForQuestionAnswering(config)
  inputs = dummy_inputs(config, batch_size=1, seq_len=4, num_objects=2)
  params = jax.jit(lambda: nn.unbox(model.init(jax.random.key(job.seed), **inputs)["params"]))()

  def forward(p, batch):
    return model.apply({"params": p}, **{k: batch[k] for k in workload.MODEL_INPUTS},
                       deterministic=True).question_answering_score

  spec = batch_spec(config, job.infer_batch, job.seq_len, job.num_objects)
  start = time.perf_counter()
  compiled = jax.jit(forward).lower(params, spec).compile()
  compile_s = time.perf_counter() - start
  batches = device_batches(config, job, job.infer_batch, job.num_batches, config.num_qa_labels)
  timing = workload.time_steps(lambda i: compiled(params, batches[i % len(batches)]),
                               jax.block_until_ready, job.warmup, job.steps)
  flops = workload.infer_flops_per_example(config, job.seq_len, job.num_objects,
                                           config.num_qa_labels)
  return dict(timing, **workload.throughput(timing, job.infer_batch, flops, peak),
              **compiled_stats(compiled, job.infer_batch), compile_s=compile_s,
              peak_bytes=_memory_stat("peak_bytes_in_use"),
              attention=config.attention_implementation,
              attention_note=resolve_attention(job)[1])


def is_out_of_memory(error: BaseException) -> bool:
  text = f"{type(error).__name__}: {error}"
  return "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower()


def max_batch(job: Job) -> dict[str, Any]:
  """The largest batch our train step compiles and runs 2 steps at."""
  limit = _memory_stat("bytes_limit")
  if limit is None:
    return dict(batch=None, note="the device reports no memory limit (CPU): not searched")

  def probe(b: int) -> Probe:
    try:
      compiled, config, state, compile_s = compile_train_step(job, b)
    except Exception as e:  # pylint: disable=broad-except
      if is_out_of_memory(e):
        return Probe(b, False, note="out of memory while compiling")
      raise
    need = compiled_stats(compiled, b)["xla_memory_bytes"]
    note = f"compiled in {compile_s:.0f}s"
    if need is not None and need > limit:
      return Probe(b, False, need, note + "; XLA's estimate is over the limit")
    try:
      data = device_batches(config, job, b, 1)[0]
      metrics = None
      for _ in range(2):
        state, metrics = compiled(state, data)
      jax.block_until_ready(metrics)
    except Exception as e:  # pylint: disable=broad-except
      if is_out_of_memory(e):
        return Probe(b, False, need, note + "; out of memory when run")
      raise
    return Probe(b, True, need, note)

  best, probes = workload.search_max_batch(probe, job.batch, job.max_batch_granule, limit,
                                           job.max_batch_probes)
  for p in probes:
    workload.log(f"max batch probe {p.batch}: {'fits' if p.fits else 'does not fit'} "
                 f"({p.note}; XLA estimate {workload.gib(p.memory_bytes)} GiB of "
                 f"{workload.gib(limit)})")
  return dict(batch=best, bytes_limit=limit, granule=job.max_batch_granule,
              probes=[vars(p) for p in probes], variant=job.variant.label(),
              attention=resolve_attention(job)[0],
              mem_fraction=os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.75 (default)"),
              xla_flags=os.environ.get("XLA_FLAGS", ""))


def device_info() -> dict[str, Any]:
  dev = jax.devices()[0]
  return dict(device=dev.device_kind, platform=dev.platform, device_count=jax.device_count())
