"""Our side: the lxmert_jax train step and VQA forward, timed; the max-batch search.

The train step is the computation of `lxmert_jax.train.make_train_step`,
assembled from the same package pieces (`LxmertForPreTraining`,
`losses.pretraining_losses` and `losses.pretraining_metrics`, which
`objective.compute` sums, and `masked_decoding.pretraining_grads` as
`train.grads_and_metrics` calls it). It is not imported from there:
`lxmert_jax.train` needs ml_collections, grain and tensorflow_datasets at
import time, and its step needs a mesh, sharded state and a ConfigDict, none
of which a bare GPU image with jax, flax, optax, orbax, torch and
transformers provides. The optimiser is AdamW with global-norm clipping (the
training config's `adamw` option without its schedule and decay mask), the
same update the PyTorch peer runs, rather than the default BertAdam.
"""

from __future__ import annotations

import functools
import os
import time
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks import workload
from benchmarks.workload import Job, Probe, Variant
from lxmert_jax.objectives import losses
from lxmert_jax.objectives import masked_decoding
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


def adamw() -> optax.GradientTransformation:
  """AdamW on every parameter after global-norm clipping, as the PyTorch peer runs it."""
  return optax.chain(
      optax.clip_by_global_norm(workload.CLIP_NORM),
      optax.adamw(workload.LEARNING_RATE, b1=0.9, b2=0.999, eps=workload.ADAM_EPS,
                  weight_decay=workload.WEIGHT_DECAY))


def init_train_state(model: nn.Module, config: LxmertConfig, tx: optax.GradientTransformation,
                     seed: int) -> dict[str, Any]:
  """Step, parameters (random init, storage dtype), optimiser state, dropout key."""
  inputs = dummy_inputs(config, batch_size=1, seq_len=4, num_objects=2)

  def init():
    params = nn.unbox(model.init(jax.random.key(seed), **inputs)["params"])
    return dict(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                rng=jax.random.key(seed + 1))

  return jax.jit(init)()


def make_train_step(model: nn.Module, config: LxmertConfig, tx: optax.GradientTransformation,
                    variant: Variant) -> Callable:
  """`(state, batch) -> (state, metrics)`, the computation of `lxmert_jax.train`'s step.

  The same forward (dropout on, key `fold_in(rng, step)`), loss (unit task
  weights), accuracy counts, gradient norm and optimiser update. With the
  variant's decode fractions, the MLM and feature-regression decoders run on
  the gathered masked rows unless a batch has more of them than slots, in
  which case `lax.cond` takes the full branch (`decode_fallback` in the
  metrics says which ran); `masked_decoding.pretraining_grads` computes the
  gradients, as in `train.grads_and_metrics`.
  """

  def grads_and_metrics(params, batch, key):
    def score(heads, labels):
      total, terms = losses.pretraining_losses(heads, labels, config)
      return total, {"loss": total, **{f"loss/{k}": v for k, v in terms.items()},
                     **losses.pretraining_metrics(heads, labels)}

    grads, metrics, fallback = masked_decoding.pretraining_grads(
        model, params, {k: batch[k] for k in workload.MODEL_INPUTS}, batch, key, score,
        mlm_fraction=variant.mlm_fraction, feat_fraction=variant.feat_fraction)
    return grads, dict(metrics, decode_fallback=fallback)

  def step(state, batch):
    key = jax.random.fold_in(state["rng"], state["step"])
    grads, metrics = grads_and_metrics(state["params"], batch, key)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    metrics["grad_norm"] = optax.tree.norm(grads)
    return dict(state, step=state["step"] + 1, params=params, opt_state=opt_state), metrics

  return step


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
  config = our_config(job)
  model = LxmertForPreTraining(config)
  tx = adamw()
  state = init_train_state(model, config, tx, job.seed)
  fn = jax.jit(make_train_step(model, config, tx, job.variant),
               donate_argnums=(0,) if job.variant.donate else ())
  start = time.perf_counter()
  compiled = fn.lower(state, batch_spec(config, batch, job.seq_len, job.num_objects)).compile()
  return compiled, config, state, time.perf_counter() - start


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
