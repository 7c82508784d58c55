"""Times LXMERT pre-training and inference: lxmert_jax against transformers' PyTorch model.

One run measures, on one device and on identical shapes and work:

* the full pre-training train step (all five objectives with their labels,
  dropout on, AdamW with global-norm clipping at 1.0) of ours and of
  transformers' `LxmertForPreTraining`, eager with bf16 autocast and under
  `torch.compile`;
* the VQA-style forward of `LxmertForQuestionAnswering` (3129 answers, no
  dropout) of both, for inference throughput;
* optionally, the largest batch our train step fits in device memory.

Each step is synchronised with the device (`jax.block_until_ready`,
`torch.cuda.synchronize`) and timed after a warm-up; the table reports the
median and the 10th/90th percentiles, examples per second, model FLOPs
utilisation (MFU, counted by `forward_flops` below) and peak device memory.
Batches are generated once, placed on the device before timing and rotated,
so the input pipeline is not part of the measurement on either side.

Before timing, `--check` compares the two models on the same weights
(converted from the PyTorch model with `lxmert_jax.convert`): fp32 logits and
loss terms must agree to 1e-4 relative, and our bf16 outputs must stay within
bf16 tolerance of fp32.

    python -m benchmarks.train_step --out results.json                # GPU, all sides
    python -m benchmarks.train_step --ladder --max-batch --out r.json # + lever ladder, max batch
    python -m benchmarks.train_step --tiny --sides ours,torch-eager   # CPU functional check

Run it from the repository root. Unless `--no-isolate` (or `--tiny`), every
measurement runs in a fresh child process, so that peak-memory readings are
per measurement and PyTorch and JAX never share a device allocator.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import json
import math
import os
import pathlib
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

# PyTorch and JAX may share the device in one process (the checks always do);
# JAX would otherwise reserve 75% of GPU memory as soon as it starts.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import flax.linen as nn  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position
import optax  # pylint: disable=g-import-not-at-top,wrong-import-position

# Only modules that need nothing beyond jax, flax, optax and orbax at import time.
from lxmert_jax import convert, losses  # pylint: disable=wrong-import-position
from lxmert_jax.configuration import LxmertConfig  # pylint: disable=wrong-import-position
from lxmert_jax.heads import LxmertForPreTraining, LxmertForQuestionAnswering  # pylint: disable=wrong-import-position
from lxmert_jax.modeling import dummy_inputs  # pylint: disable=wrong-import-position

ROOT = pathlib.Path(__file__).resolve().parents[1]
SIDES = ("ours", "torch-eager", "torch-compile")
MODEL_INPUTS = ("input_ids", "visual_feats", "visual_pos", "attention_mask", "token_type_ids")
VQA_ANSWERS = 3129
CLS_ID, SEP_ID, MASK_ID = 101, 102, 103
MLM_RATE = 0.15  # word pieces masked for the MLM loss, and boxes for the feature loss
LEARNING_RATE, WEIGHT_DECAY, ADAM_EPS, CLIP_NORM = 1e-4, 0.01, 1e-6, 1.0
FP32_TOL = 1e-4
# bf16 keeps 8 mantissa bits (relative rounding 2^-9 per operation); through 19
# post-LN layers the outputs of a random-weight model drift by up to ~1e-2 of
# their largest value, and transformers' bf16 autocast drifts as much.
BF16_TOL = 5e-2

# A small model of the same structure, for CPU runs of every code path.
TINY_MODEL = dict(vocab_size=512, hidden_size=64, num_attention_heads=4, intermediate_size=128,
                  l_layers=2, r_layers=1, x_layers=1, visual_feat_dim=64, num_qa_labels=32,
                  num_object_labels=40, num_attr_labels=16)
TINY_VQA_ANSWERS = 24

# Dense matrix-unit peaks from vendor datasheets, TFLOP/s: (bf16, tf32). The
# fp32 runs use TF32 matmuls (JAX's and, for timing, PyTorch's default on these
# GPUs), so their MFU is against the TF32 peak.
PEAK_TFLOPS = (("H100 PCIe", (756.0, 378.0)), ("H100 NVL", (835.0, 418.0)),
               ("H100", (989.4, 494.7)), ("H200", (989.4, 494.7)),
               ("A100", (312.0, 156.0)))
PACKAGES = ("jax", "jaxlib", "jax-cuda12-plugin", "jax-cuda13-plugin", "flax", "optax",
            "orbax-checkpoint", "chex", "numpy", "torch", "transformers", "triton",
            "nvidia-cudnn-cu12", "nvidia-cudnn-cu13", "nvidia-cublas-cu12", "nvidia-cublas")


# --- What is measured ----------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Variant:
  """Our speed levers. None of them changes the loss being optimised.

  Attributes:
    attention: `reference` (softmax written out, attention-probability dropout
      as the reference), `xla` or `cudnn` (`jax.nn.dot_product_attention`, no
      attention-probability dropout), or `auto` (cudnn on GPU in bf16, else xla).
    mlm_gather: decode only the masked text positions (a static capacity, see
      `mlm_capacity`) instead of all B*T.
    prng: `jax_default_prng_impl` for the dropout masks.
    donate: donate the train state to the step (updated in place).
  """

  attention: str = "auto"
  mlm_gather: bool = True
  prng: str = "rbg"
  donate: bool = True

  def label(self) -> str:
    return (f"attn={self.attention} mlm={'gathered' if self.mlm_gather else 'all'} "
            f"prng={self.prng}{' donate' if self.donate else ''}")


BASELINE = Variant(attention="reference", mlm_gather=False, prng="threefry", donate=True)


def lever_ladder(best: Variant) -> list[Variant]:
  """Cumulative rungs from the plain model to `best`: one more lever per rung."""
  rungs = [BASELINE, dataclasses.replace(BASELINE, prng=best.prng),
           dataclasses.replace(BASELINE, prng=best.prng, mlm_gather=best.mlm_gather),
           best]
  return list(dict.fromkeys(rungs))


@dataclasses.dataclass(frozen=True)
class Job:
  """One measurement, run in-process or in a child process."""

  kind: str  # "check" | "run" | "max_batch"
  side: str = "ours"
  variant: Variant = Variant()
  train: bool = True
  infer: bool = True
  tiny: bool = False
  dtype: str = "bf16"
  batch: int = 256
  infer_batch: int = 256
  seq_len: int = 20
  num_objects: int = 36
  steps: int = 50
  warmup: int = 10
  num_batches: int = 2
  seed: int = 0
  check_batch: int = 4
  max_batch_granule: int = 64
  max_batch_probes: int = 6
  torch_compile_mode: str = "default"

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self))

  @classmethod
  def from_json(cls, text: str) -> "Job":
    data = json.loads(text)
    return cls(**dict(data, variant=Variant(**data["variant"])))


def model_fields(tiny: bool) -> dict[str, Any]:
  """The LxmertConfig fields of the benchmark model (base: the defaults)."""
  return dict(TINY_MODEL) if tiny else {}


def vqa_answers(tiny: bool) -> int:
  return TINY_VQA_ANSWERS if tiny else VQA_ANSWERS


# --- FLOPs ---------------------------------------------------------------------


def forward_flops(config: LxmertConfig, seq_len: int, num_objects: int,
                  head: str = "pretraining", num_answers: Optional[int] = None
                  ) -> dict[str, int]:
  """Matmul FLOPs of one example's forward pass, by component (2 per multiply-add).

  Counts what the reference computes: embedding lookups, LayerNorm, softmax,
  activations and losses are free; every Dense and both attention products
  count. With S the stream's length, D hidden, F the FFN width:

  * attention (queries from a stream of length Q, keys/values from one of
    length K): Q/K/V projections 2QD^2 + 4KD^2, scores and context 4QKD,
    output projection 2QD^2;
  * an L layer (S = T) or R layer (S = O): attention(S, S) + FFN 4SDF;
  * an X layer: the shared cross-attention in both directions,
    attention(T, O) + attention(O, T), the two self-attentions
    attention(T, T) + attention(O, O), and the two FFNs 4(T + O)DF;
  * visual feature encoder 2O(F_v + 4)D, pooler 2D^2;
  * pre-training heads: MLM transform 2TD^2 and decoder 2TDV over all T
    positions (the reference decodes every position; decoding only the masked
    ones is our lever and is not credited here), matching 4D, object head
    transform 2OD^2 and decoders 2OD(objects + attributes + F_v), answer head
    2D(2D) + 2(2D)A.

  A training step is counted as 3x the forward (backward = 2x forward).
  """
  c = config
  d, f, t, o = c.hidden_size, c.intermediate_size, seq_len, num_objects

  def attention(q: int, k: int) -> int:
    return 2 * q * d * d + 4 * k * d * d + 4 * q * k * d + 2 * q * d * d

  def ffn(s: int) -> int:
    return 4 * s * d * f

  out = {
      "visual_encoder": 2 * o * (c.visual_feat_dim + c.visual_pos_dim) * d,
      "language_layers": c.l_layers * (attention(t, t) + ffn(t)),
      "relation_layers": c.r_layers * (attention(o, o) + ffn(o)),
      "cross_layers": c.x_layers * (attention(t, o) + attention(o, t) + attention(t, t)
                                    + attention(o, o) + ffn(t) + ffn(o)),
      "pooler": 2 * d * d,
  }
  answers = c.num_qa_labels if num_answers is None else num_answers
  if head == "pretraining":
    out["mlm_head"] = 2 * t * d * d + 2 * t * d * c.vocab_size
    out["match_head"] = 2 * d * 2
    out["object_head"] = 2 * o * d * d + 2 * o * d * (
        c.num_object_labels + c.num_attr_labels + c.visual_feat_dim)
  out["answer_head"] = 2 * d * 2 * d + 2 * 2 * d * answers
  return out


def train_flops_per_example(config: LxmertConfig, seq_len: int, num_objects: int) -> int:
  return 3 * sum(forward_flops(config, seq_len, num_objects).values())


def infer_flops_per_example(config: LxmertConfig, seq_len: int, num_objects: int,
                            num_answers: int) -> int:
  return sum(forward_flops(config, seq_len, num_objects, "qa", num_answers).values())


def peak_flops(device_name: str, dtype: str) -> Optional[float]:
  """The datasheet dense matrix peak of a GPU (FLOP/s), None when unknown."""
  for key, (bf16, tf32) in PEAK_TFLOPS:
    if key in device_name:
      return 1e12 * (bf16 if dtype == "bf16" else tf32)
  return None


# --- Synthetic batches ---------------------------------------------------------


def mlm_capacity(batch: int, seq_len: int, rate: float = MLM_RATE) -> int:
  """Static number of decoded MLM positions when only masked ones are decoded.

  Six standard deviations above the expected count when every sentence fills
  all T-2 word-piece slots, rounded up to a multiple of 64: masking each word
  piece independently with probability `rate` overflows it with probability
  below 1e-9.
  """
  slots = batch * (seq_len - 2)
  bound = rate * slots + 6.0 * math.sqrt(slots * rate * (1.0 - rate))
  return min(batch * seq_len, 64 * math.ceil(bound / 64))


def synthetic_batch(config: LxmertConfig, batch: int, seq_len: int, num_objects: int,
                    seed: int, num_answers: Optional[int] = None) -> dict[str, np.ndarray]:
  """A pre-training batch shaped and labelled like the reference pipeline's.

  Sentences of 5..T-2 word pieces between [CLS] and [SEP], then padding; each
  word piece masked with probability 0.15 (MLM label = the original id);
  half the pairs mismatched; a QA label on two thirds of the matched pairs;
  36 boxes with non-negative features, each box masked (features zeroed,
  regression target = original features) with probability 0.15.
  """
  rng = np.random.default_rng(seed)
  b, t, o = batch, seq_len, num_objects
  answers = config.num_qa_labels if num_answers is None else num_answers
  low = 1000 if config.vocab_size > 2000 else MASK_ID + 1
  lengths = rng.integers(min(5, t - 2), t - 1, size=b)
  pos = np.arange(t)[None, :]
  words = (pos >= 1) & (pos <= lengths[:, None])
  ids = np.where(words, rng.integers(low, config.vocab_size, (b, t)), 0)
  ids[:, 0] = CLS_ID
  ids[np.arange(b), lengths + 1] = SEP_ID
  attention_mask = (pos <= lengths[:, None] + 1).astype(np.int32)
  masked = words & (rng.uniform(size=(b, t)) < MLM_RATE)
  masked[0, 1] = True
  mlm_labels = np.where(masked, ids, losses.IGNORE_INDEX)
  ids = np.where(masked, MASK_ID, ids)
  matched = rng.integers(0, 2, b)
  ans = np.where((matched == 1) & (rng.uniform(size=b) < 2 / 3),
                 rng.integers(0, answers, b), losses.IGNORE_INDEX)
  feats = np.maximum(rng.normal(size=(b, o, config.visual_feat_dim)), 0).astype(np.float32)
  corner = rng.uniform(0.0, 0.5, (b, o, 2))
  boxes = np.concatenate([corner, corner + rng.uniform(0.1, 0.5, (b, o, 2))], -1)
  feat_mask = (rng.uniform(size=(b, o)) < MLM_RATE).astype(np.float32)
  return dict(
      input_ids=ids.astype(np.int32), attention_mask=attention_mask,
      token_type_ids=np.zeros((b, t), np.int32),
      visual_feats=np.where(feat_mask[..., None] > 0, 0.0, feats).astype(np.float32),
      visual_pos=boxes.astype(np.float32),
      masked_lm_labels=mlm_labels.astype(np.int32), matched_label=matched.astype(np.int32),
      ans=ans.astype(np.int32),
      obj_labels=rng.integers(0, config.num_object_labels, (b, o)).astype(np.int32),
      obj_conf=rng.uniform(size=(b, o)).astype(np.float32),
      attr_labels=rng.integers(0, config.num_attr_labels, (b, o)).astype(np.int32),
      attr_conf=rng.uniform(size=(b, o)).astype(np.float32),
      feat_targets=feats, feat_mask=feat_mask)


def batch_spec(config: LxmertConfig, batch: int, seq_len: int,
               num_objects: int) -> dict[str, jax.ShapeDtypeStruct]:
  """Shapes and dtypes of `synthetic_batch`, to compile without the data."""
  tiny = synthetic_batch(config, 2, seq_len, num_objects, seed=0)
  return {k: jax.ShapeDtypeStruct((batch,) + v.shape[1:], v.dtype) for k, v in tiny.items()}


# --- Timing --------------------------------------------------------------------


def time_steps(step: Callable[[int], Any], sync: Callable[[Any], None], warmup: int,
               steps: int) -> dict[str, float]:
  """Per-step wall time with a device sync after each step, after `warmup` steps.

  Also times `steps` back-to-back steps with one sync at the end
  (`pipelined_ms`), as a training loop that never waits on the device runs.
  """
  for i in range(warmup):
    sync(step(i))
  times = []
  for i in range(steps):
    start = time.perf_counter()
    sync(step(warmup + i))
    times.append(time.perf_counter() - start)
  start = time.perf_counter()
  out = None
  for i in range(steps):
    out = step(warmup + steps + i)
  sync(out)
  pipelined = (time.perf_counter() - start) / steps
  ms = np.asarray(times) * 1e3
  return dict(median_ms=float(np.median(ms)), p10_ms=float(np.percentile(ms, 10)),
              p90_ms=float(np.percentile(ms, 90)), pipelined_ms=pipelined * 1e3,
              steps=steps, warmup=warmup)


def throughput(timing: Mapping[str, float], batch: int, flops_per_example: int,
               peak: Optional[float]) -> dict[str, Optional[float]]:
  """Examples/s and MFU from the median step time."""
  per_s = batch / (timing["median_ms"] / 1e3)
  achieved = per_s * flops_per_example
  return dict(examples_per_s=per_s, model_tflops=achieved / 1e12,
              mfu=None if peak is None else achieved / peak)


# --- Our side ------------------------------------------------------------------


def resolve_attention(attention: str, dtype: str) -> str:
  """`auto` is cudnn on GPU in bf16 (its only supported case), else xla."""
  if attention != "auto":
    return attention
  return "cudnn" if jax.devices()[0].platform == "gpu" and dtype == "bf16" else "xla"


def our_config(job: Job, *, head: str = "pretraining") -> LxmertConfig:
  fields = model_fields(job.tiny)
  if head == "qa":
    fields["num_qa_labels"] = vqa_answers(job.tiny)
  return LxmertConfig(**fields, dtype="bfloat16" if job.dtype == "bf16" else "float32",
                      attention_implementation=resolve_attention(job.variant.attention,
                                                                 job.dtype))


def adamw() -> optax.GradientTransformation:
  """AdamW on every parameter with global-norm clipping: torch's AdamW + clip_grad_norm_."""
  return optax.chain(optax.clip_by_global_norm(CLIP_NORM),
                     optax.adamw(LEARNING_RATE, b1=0.9, b2=0.999, eps=ADAM_EPS,
                                 weight_decay=WEIGHT_DECAY))


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
                    capacity: Optional[int]) -> Callable:
  """`(state, batch) -> (state, metrics)`: what `lxmert_jax.train`'s step computes.

  The same forward (`LxmertForPreTraining`, dropout on, key `fold_in(rng,
  step)`), loss (`losses.pretraining_losses`, unit weights), accuracy counts
  (`losses.pretraining_metrics`), gradient norm and optimiser update. With
  `capacity`, the MLM decoder runs on the gathered masked positions
  (`losses.gather_masked_positions`); the step reports `mlm_overflow`, which
  must stay False (the benchmark data never exceeds the capacity).
  """

  def loss_fn(params, batch, key):
    labelled, extra = batch, {}
    if capacity is not None:
      positions, mlm_labels, overflow = losses.gather_masked_positions(
          batch["masked_lm_labels"], capacity)
      labelled = dict(batch, masked_lm_labels=mlm_labels)
      extra["mlm_positions"] = positions
    outputs = model.apply({"params": params}, **{k: batch[k] for k in MODEL_INPUTS},
                          deterministic=False, rngs={"dropout": key}, **extra)
    total, terms = losses.pretraining_losses(outputs, labelled, config)
    metrics = {"loss": total, **{f"loss/{k}": v for k, v in terms.items()},
               **losses.pretraining_metrics(outputs, labelled)}
    if capacity is not None:
      metrics["mlm_overflow"] = overflow
    return total, metrics

  def step(state, batch):
    key = jax.random.fold_in(state["rng"], state["step"])
    (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state["params"], batch, key)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    metrics["grad_norm"] = optax.tree.norm(grads)
    return dict(state, step=state["step"] + 1, params=params, opt_state=opt_state), metrics

  return step


def compiled_stats(compiled: Any, batch: int) -> dict[str, Optional[float]]:
  """XLA's own FLOP count and static memory need of a compiled step."""
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


def device_peak_bytes() -> Optional[int]:
  stats = jax.devices()[0].memory_stats()
  return None if not stats else int(stats.get("peak_bytes_in_use", 0)) or None


def device_bytes_limit() -> Optional[int]:
  stats = jax.devices()[0].memory_stats()
  return None if not stats else int(stats.get("bytes_limit", 0)) or None


def set_prng(impl: str) -> None:
  jax.config.update("jax_default_prng_impl", impl)


def compile_train_step(job: Job, batch: int) -> tuple[Any, Any, Any, Optional[int], float]:
  """(compiled step, model, state, MLM capacity, compile seconds) for `batch`."""
  set_prng(job.variant.prng)
  config = our_config(job)
  model = LxmertForPreTraining(config)
  tx = adamw()
  state = init_train_state(model, config, tx, job.seed)
  capacity = mlm_capacity(batch, job.seq_len) if job.variant.mlm_gather else None
  fn = jax.jit(make_train_step(model, config, tx, capacity),
               donate_argnums=(0,) if job.variant.donate else ())
  start = time.perf_counter()
  compiled = fn.lower(state, batch_spec(config, batch, job.seq_len, job.num_objects)).compile()
  return compiled, config, state, capacity, time.perf_counter() - start


def device_batches(config: LxmertConfig, job: Job, batch: int, count: int,
                   num_answers: Optional[int] = None) -> list[dict[str, jax.Array]]:
  return [jax.device_put(synthetic_batch(config, batch, job.seq_len, job.num_objects,
                                         job.seed + 100 + i, num_answers))
          for i in range(count)]


def bench_ours_train(job: Job, peak: Optional[float]) -> dict[str, Any]:
  compiled, config, state, capacity, compile_s = compile_train_step(job, job.batch)
  batches = device_batches(config, job, job.batch, job.num_batches)
  holder = {"state": state}

  def step(i: int):
    holder["state"], metrics = compiled(holder["state"], batches[i % len(batches)])
    return metrics

  timing = time_steps(step, jax.block_until_ready, job.warmup, job.steps)
  last = jax.device_get(step(0))
  if capacity is not None and bool(last["mlm_overflow"]):
    raise RuntimeError(f"more masked positions than the MLM capacity {capacity}")
  if not np.isfinite(float(last["loss"])):
    raise RuntimeError(f"non-finite loss {float(last['loss'])}")
  flops = train_flops_per_example(config, job.seq_len, job.num_objects)
  return dict(timing, **throughput(timing, job.batch, flops, peak),
              **compiled_stats(compiled, job.batch), compile_s=compile_s,
              peak_bytes=device_peak_bytes(), loss=float(last["loss"]),
              attention=config.attention_implementation,
              mlm_positions=capacity or job.batch * job.seq_len)


def bench_ours_infer(job: Job, peak: Optional[float]) -> dict[str, Any]:
  set_prng(job.variant.prng)
  config = our_config(job, head="qa")
  model = LxmertForQuestionAnswering(config)
  inputs = dummy_inputs(config, batch_size=1, seq_len=4, num_objects=2)
  params = jax.jit(lambda: nn.unbox(model.init(jax.random.key(job.seed), **inputs)["params"]))()

  def forward(p, batch):
    return model.apply({"params": p}, **{k: batch[k] for k in MODEL_INPUTS},
                       deterministic=True).question_answering_score

  spec = batch_spec(config, job.infer_batch, job.seq_len, job.num_objects)
  start = time.perf_counter()
  compiled = jax.jit(forward).lower(params, spec).compile()
  compile_s = time.perf_counter() - start
  batches = device_batches(config, job, job.infer_batch, job.num_batches, config.num_qa_labels)
  timing = time_steps(lambda i: compiled(params, batches[i % len(batches)]),
                      jax.block_until_ready, job.warmup, job.steps)
  flops = infer_flops_per_example(config, job.seq_len, job.num_objects, config.num_qa_labels)
  return dict(timing, **throughput(timing, job.infer_batch, flops, peak),
              **compiled_stats(compiled, job.infer_batch), compile_s=compile_s,
              peak_bytes=device_peak_bytes(), attention=config.attention_implementation)


def is_out_of_memory(error: BaseException) -> bool:
  text = f"{type(error).__name__}: {error}"
  return "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower()


@dataclasses.dataclass
class Probe:
  """One batch size tried by the max-batch search."""

  batch: int
  fits: bool
  memory_bytes: Optional[float] = None
  note: str = ""


def search_max_batch(probe: Callable[[int], Probe], start: int, granule: int,
                     limit_bytes: Optional[float], max_probes: int) -> tuple[Optional[int], list[Probe]]:
  """The largest multiple of `granule` for which `probe` fits, with few probes.

  Each probe compiles (and, if XLA's memory estimate fits, runs) the step, so
  probes are expensive. The next size is where the line through the last two
  memory estimates meets `limit_bytes`, when that lies strictly inside the
  current bracket; otherwise the search doubles (no failure yet) or bisects.

  Returns:
    (largest batch seen to fit or None, the probes in order).
  """
  probes: list[Probe] = []
  lo, hi = 0, None
  b = start
  while len(probes) < max_probes:
    p = probe(b)
    probes.append(p)
    if p.fits:
      lo = max(lo, b)
    else:
      hi = b if hi is None else min(hi, b)
    if hi is not None and hi - lo <= granule:
      break
    known = [q for q in probes if q.memory_bytes]
    candidate = None
    if limit_bytes and len(known) >= 2:
      q1, q2 = known[-2], known[-1]
      if q2.batch != q1.batch:
        slope = (q2.memory_bytes - q1.memory_bytes) / (q2.batch - q1.batch)
        if slope > 0:
          candidate = granule * int((q2.batch + (limit_bytes - q2.memory_bytes) / slope)
                                    // granule)
    if candidate is None or candidate <= lo or (hi is not None and candidate >= hi):
      candidate = 2 * lo if hi is None else granule * ((lo + hi) // (2 * granule))
      if candidate <= lo:
        break
    if any(q.batch == candidate for q in probes):
      break
    b = candidate
  return (lo or None), probes


def max_batch_ours(job: Job) -> dict[str, Any]:
  """Largest batch our train step runs at (compiled, then 2 steps executed)."""
  limit = device_bytes_limit()
  if limit is None:
    return dict(batch=None, note="the device reports no memory limit (CPU): not searched")

  def probe(b: int) -> Probe:
    try:
      compiled, config, state, _, compile_s = compile_train_step(job, b)
    except Exception as e:  # pylint: disable=broad-except
      if is_out_of_memory(e):
        return Probe(b, False, note="compile: out of memory")
      raise
    need = compiled_stats(compiled, b)["xla_memory_bytes"]
    note = f"compile {compile_s:.0f}s"
    if need is not None and need > limit:
      return Probe(b, False, need, note + "; XLA estimate over the limit")
    try:
      data = device_batches(config, job, b, 1)[0]
      for _ in range(2):
        state, metrics = compiled(state, data)
      jax.block_until_ready(metrics)
      return Probe(b, True, need, note)
    except Exception as e:  # pylint: disable=broad-except
      if is_out_of_memory(e):
        return Probe(b, False, need, note + "; out of memory when run")
      raise

  best, probes = search_max_batch(probe, job.batch, job.max_batch_granule, limit,
                                  job.max_batch_probes)
  for p in probes:
    log(f"max batch probe {p.batch}: {'fits' if p.fits else 'does not fit'} "
        f"({p.note}; XLA estimate {gib(p.memory_bytes)} GiB of {gib(limit)})")
  return dict(batch=best, bytes_limit=limit, granule=job.max_batch_granule,
              probes=[dataclasses.asdict(p) for p in probes], variant=job.variant.label(),
              mem_fraction=os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.75 (default)"))


# --- PyTorch side --------------------------------------------------------------


def torch_modules() -> tuple[Any, Any]:
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel
  return torch, transformers


def torch_device() -> Any:
  torch, _ = torch_modules()
  return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def to_torch(batch: Mapping[str, np.ndarray], device: Any) -> tuple[dict, dict]:
  """(model inputs, pre-training labels in transformers' format) on `device`."""
  torch, _ = torch_modules()
  t = {k: torch.from_numpy(np.asarray(v)).to(device) for k, v in batch.items()}
  as_long = lambda x: x.long()  # pylint: disable=unnecessary-lambda-assignment
  inputs = dict(input_ids=as_long(t["input_ids"]), attention_mask=as_long(t["attention_mask"]),
                token_type_ids=as_long(t["token_type_ids"]), visual_feats=t["visual_feats"],
                visual_pos=t["visual_pos"])
  labels = dict(labels=as_long(t["masked_lm_labels"]), matched_label=as_long(t["matched_label"]),
                ans=as_long(t["ans"]),
                obj_labels={"obj": (as_long(t["obj_labels"]), t["obj_conf"]),
                            "attr": (as_long(t["attr_labels"]), t["attr_conf"]),
                            "feat": (t["feat_targets"], t["feat_mask"])})
  return inputs, labels


def torch_sync() -> Callable[[Any], None]:
  torch, _ = torch_modules()
  if torch.cuda.is_available():
    return lambda _: torch.cuda.synchronize()
  return lambda _: None


def torch_autocast(dtype: str) -> Any:
  torch, _ = torch_modules()
  kind = "cuda" if torch.cuda.is_available() else "cpu"
  return torch.autocast(kind, dtype=torch.bfloat16, enabled=dtype == "bf16")


def torch_peak_bytes() -> Optional[int]:
  torch, _ = torch_modules()
  return int(torch.cuda.max_memory_allocated()) if torch.cuda.is_available() else None


def torch_reset_peak() -> None:
  torch, _ = torch_modules()
  if torch.cuda.is_available():
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()


def bench_torch_train(job: Job, peak: Optional[float]) -> dict[str, Any]:
  torch, transformers = torch_modules()
  device = torch_device()
  torch.backends.cuda.matmul.allow_tf32 = True  # fp32 runs time TF32 matmuls, as JAX does
  torch.manual_seed(job.seed)
  config = LxmertConfig(**model_fields(job.tiny))
  with torch.device(device):
    model = transformers.LxmertForPreTraining(
        transformers.LxmertConfig(**model_fields(job.tiny))).train()
  opt = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, betas=(0.9, 0.999),
                          eps=ADAM_EPS, weight_decay=WEIGHT_DECAY,
                          fused=device.type == "cuda")
  forward = model if job.side == "torch-eager" else torch.compile(
      model, mode=None if job.torch_compile_mode == "default" else job.torch_compile_mode)
  batches = [to_torch(synthetic_batch(config, job.batch, job.seq_len, job.num_objects,
                                      job.seed + 100 + i), device)
             for i in range(job.num_batches)]
  torch_reset_peak()

  def step(i: int):
    inputs, labels = batches[i % len(batches)]
    with torch_autocast(job.dtype):
      loss = forward(**inputs, **labels).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP_NORM)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss

  sync = torch_sync()
  start = time.perf_counter()
  sync(step(0))
  first_s = time.perf_counter() - start
  timing = time_steps(step, sync, job.warmup, job.steps)
  loss = float(step(0).detach())
  if not math.isfinite(loss):
    raise RuntimeError(f"non-finite loss {loss}")
  flops = train_flops_per_example(config, job.seq_len, job.num_objects)
  return dict(timing, **throughput(timing, job.batch, flops, peak), compile_s=first_s,
              peak_bytes=torch_peak_bytes(), loss=loss, attention="reference",
              mlm_positions=job.batch * job.seq_len)


def bench_torch_infer(job: Job, peak: Optional[float]) -> dict[str, Any]:
  torch, transformers = torch_modules()
  device = torch_device()
  torch.backends.cuda.matmul.allow_tf32 = True
  torch.manual_seed(job.seed)
  answers = vqa_answers(job.tiny)
  fields = dict(model_fields(job.tiny), num_qa_labels=answers)
  config = LxmertConfig(**fields)
  with torch.device(device):
    model = transformers.LxmertForQuestionAnswering(transformers.LxmertConfig(**fields)).eval()
  forward = model if job.side == "torch-eager" else torch.compile(
      model, mode=None if job.torch_compile_mode == "default" else job.torch_compile_mode)
  batches = [to_torch(synthetic_batch(config, job.infer_batch, job.seq_len, job.num_objects,
                                      job.seed + 100 + i, answers), device)[0]
             for i in range(job.num_batches)]
  torch_reset_peak()

  def step(i: int):
    with torch.inference_mode(), torch_autocast(job.dtype):
      return forward(**batches[i % len(batches)]).question_answering_score

  sync = torch_sync()
  start = time.perf_counter()
  sync(step(0))
  first_s = time.perf_counter() - start
  timing = time_steps(step, sync, job.warmup, job.steps)
  flops = infer_flops_per_example(config, job.seq_len, job.num_objects, answers)
  return dict(timing, **throughput(timing, job.infer_batch, flops, peak), compile_s=first_s,
              peak_bytes=torch_peak_bytes(), attention="reference")


# --- Correctness checks --------------------------------------------------------


def max_rel_error(ours: Any, reference: Any) -> float:
  """max |ours - reference| / max |reference|, in float64."""
  a = np.asarray(ours, np.float64)
  b = np.asarray(reference, np.float64)
  return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-30))


def hf_loss_terms(hf: Any, inputs: Mapping[str, Any], labels: Mapping[str, Any]) -> dict[str, float]:
  """Each loss term from transformers itself, by passing only that term's labels.

  Visual terms come from passing all three visual labels with the other two
  weights zeroed (transformers needs every enabled visual label).
  """
  torch, _ = torch_modules()
  single = {"mlm": "labels", "matched": "matched_label", "qa": "ans"}
  terms = {}
  with torch.no_grad():
    for term in losses.LOSS_TERMS:
      if term in single:
        kwargs = {single[term]: labels[single[term]]}
      else:
        visual = labels["obj_labels"]
        kwargs = {"obj_labels": {k: (v[0], v[1] if k == term else torch.zeros_like(v[1]))
                                 for k, v in visual.items()}}
      terms[term] = float(hf(**inputs, **kwargs).loss)
  return terms


def run_checks(job: Job) -> dict[str, Any]:
  """fp32 parity with transformers on converted weights; bf16 against fp32.

  (a) transformers' `LxmertForPreTraining` with random weights, converted to
  ours; both in eval mode with full fp32 matmuls (`allow_tf32=False`,
  `jax.default_matmul_precision('float32')`): max relative error of each
  output and each loss term, also for the loss with the MLM decoder on
  gathered positions. (b) the same weights with bf16 compute and the run's
  attention implementation against our fp32 outputs, next to transformers'
  own bf16-autocast error against its fp32 outputs for scale.
  """
  torch, transformers = torch_modules()
  device = torch_device()
  torch.backends.cuda.matmul.allow_tf32 = False
  torch.backends.cudnn.allow_tf32 = False
  torch.manual_seed(job.seed)
  fields = model_fields(job.tiny)
  with torch.device(device):
    hf = transformers.LxmertForPreTraining(transformers.LxmertConfig(**fields)).eval()
  state_dict = {k: v.detach().float().cpu().numpy() for k, v in hf.state_dict().items()}
  config = LxmertConfig(**fields)
  data = synthetic_batch(config, job.check_batch, job.seq_len, job.num_objects, job.seed + 7)
  inputs, labels = to_torch(data, device)
  with torch.no_grad():
    ref = hf(**inputs, **labels, output_hidden_states=True)
    with torch_autocast("bf16"):
      ref16 = hf(**inputs, output_hidden_states=True)
  ref_out = {"prediction_logits": ref.prediction_logits,
             "cross_relationship_score": ref.cross_relationship_score,
             "question_answering_score": ref.question_answering_score,
             "language_output": ref.language_hidden_states[-1],
             "vision_output": ref.vision_hidden_states[-1]}
  ref_out = {k: v.float().cpu().numpy() for k, v in ref_out.items()}
  ref16_out = {"prediction_logits": ref16.prediction_logits,
               "cross_relationship_score": ref16.cross_relationship_score,
               "question_answering_score": ref16.question_answering_score,
               "language_output": ref16.language_hidden_states[-1],
               "vision_output": ref16.vision_hidden_states[-1]}
  ref16_out = {k: v.float().cpu().numpy() for k, v in ref16_out.items()}
  ref_terms = hf_loss_terms(hf, inputs, labels)
  ref_terms["total"] = float(ref.loss)

  jdata = jax.device_put(data)

  def ours(cfg: LxmertConfig, capacity: Optional[int] = None) -> tuple[dict, dict]:
    model = LxmertForPreTraining(cfg)
    params = convert.state_dict_to_params(state_dict, model, source="transformers model")

    def forward(p, batch):
      labelled, extra = batch, {}
      if capacity is not None:
        positions, mlm_labels, _ = losses.gather_masked_positions(
            batch["masked_lm_labels"], capacity)
        labelled = dict(batch, masked_lm_labels=mlm_labels)
        extra["mlm_positions"] = positions
      out = model.apply({"params": p}, **{k: batch[k] for k in MODEL_INPUTS},
                        deterministic=True, **extra)
      total, terms = losses.pretraining_losses(out, labelled, cfg)
      outputs = dict(prediction_logits=out.prediction_logits,
                     cross_relationship_score=out.cross_relationship_score,
                     question_answering_score=out.question_answering_score,
                     language_output=out.language_output, vision_output=out.vision_output,
                     **{f"visual_{k}": v for k, v in out.visual_prediction.items()})
      return outputs, dict(terms, total=total)

    outputs, terms = jax.device_get(jax.jit(forward)(params, jdata))
    return ({k: np.asarray(v, np.float32) for k, v in outputs.items()},
            {k: float(v) for k, v in terms.items()})

  with jax.default_matmul_precision("float32"):
    out32, terms32 = ours(config)
    _, gathered = ours(config, capacity=mlm_capacity(job.check_batch, job.seq_len))
  fp32 = {f"output/{k}": max_rel_error(out32[k], v) for k, v in ref_out.items()}
  fp32.update({f"loss/{k}": abs(terms32[k] - v) / max(abs(v), 1e-30)
               for k, v in ref_terms.items()})
  fp32["loss/mlm (decoder on gathered positions)"] = (
      abs(gathered["mlm"] - ref_terms["mlm"]) / max(abs(ref_terms["mlm"]), 1e-30))

  attention = resolve_attention(job.variant.attention, "bf16")
  cfg16 = config.replace(dtype="bfloat16", attention_implementation=attention)
  out16, terms16 = ours(cfg16)
  bf16 = {f"output/{k}": max_rel_error(v, out32[k]) for k, v in out16.items()}
  bf16.update({f"loss/{k}": abs(v - terms32[k]) / max(abs(terms32[k]), 1e-30)
               for k, v in terms16.items()})
  torch_bf16 = {f"output/{k}": max_rel_error(v, ref_out[k]) for k, v in ref16_out.items()}
  return dict(
      batch=job.check_batch, bf16_attention=attention,
      fp32=dict(max_rel_error=fp32, tolerance=FP32_TOL,
                passed=all(v <= FP32_TOL for v in fp32.values())),
      bf16=dict(max_rel_error=bf16, tolerance=BF16_TOL,
                passed=all(v <= BF16_TOL for v in bf16.values()),
                torch_autocast_max_rel_error=torch_bf16))


# --- Environment ---------------------------------------------------------------


def package_versions() -> dict[str, str]:
  out = {"python": platform.python_version()}
  for name in PACKAGES:
    try:
      out[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      continue
  return out


def gpu_driver() -> Optional[str]:
  """`name, driver` from nvidia-smi, without touching CUDA."""
  if not shutil.which("nvidia-smi"):
    return None
  try:
    out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                          "--format=csv,noheader"], capture_output=True, text=True,
                         timeout=30, check=True).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    return None
  return out.splitlines()[0] if out else None


def jax_device_info() -> dict[str, Any]:
  dev = jax.devices()[0]
  return dict(device=dev.device_kind, platform=dev.platform, jax_backend=jax.default_backend(),
              device_count=jax.device_count())


def torch_device_info() -> dict[str, Any]:
  torch, _ = torch_modules()
  info: dict[str, Any] = dict(torch_cuda=torch.version.cuda,
                              torch_cudnn=torch.backends.cudnn.version())
  if torch.cuda.is_available():
    info["device"] = torch.cuda.get_device_name(0)
    info["platform"] = "gpu"
  else:
    info["device"] = platform.processor() or platform.machine()
    info["platform"] = "cpu"
  return info


# --- Jobs ----------------------------------------------------------------------


def log(message: str) -> None:
  print(f"[bench] {message}", flush=True)


def gib(n: Optional[float]) -> str:
  return "-" if n is None else f"{n / 2**30:.1f}"


def run_job(job: Job) -> dict[str, Any]:
  """Runs one job in this process; failures are returned, not raised."""
  result: dict[str, Any] = dict(kind=job.kind, side=job.side, variant=job.variant.label(),
                                dtype=job.dtype)
  started = time.perf_counter()
  try:
    if job.kind == "check":
      result.update(jax_device_info())
      result["check"] = run_checks(job)
    elif job.kind == "max_batch":
      result.update(jax_device_info())
      result["max_batch"] = max_batch_ours(job)
    elif job.side == "ours":
      info = jax_device_info()
      result.update(info)
      peak = peak_flops(info["device"], job.dtype)
      # Inference first: JAX's peak-memory counter only grows.
      if job.infer:
        result["infer"] = dict(bench_ours_infer(job, peak), batch=job.infer_batch)
      if job.train:
        result["train"] = dict(bench_ours_train(job, peak), batch=job.batch)
    else:
      info = torch_device_info()
      result.update(info)
      peak = peak_flops(info["device"], job.dtype)
      if job.train:
        result["train"] = dict(bench_torch_train(job, peak), batch=job.batch)
      if job.infer:
        result["infer"] = dict(bench_torch_infer(job, peak), batch=job.infer_batch)
  except Exception as e:  # pylint: disable=broad-except
    result["error"] = f"{type(e).__name__}: {e}"
    result["traceback"] = traceback.format_exc()
    log(f"{job.kind} {job.side} failed: {result['error'][:2000]}")
  result["wall_s"] = time.perf_counter() - started
  return result


def run_isolated(job: Job, timeout: Optional[float]) -> dict[str, Any]:
  """Runs `job` in a fresh Python process (this module with `--job`)."""
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
  if job.side == "ours" or job.kind == "max_batch":
    # Our runs own the device: let JAX use nearly all of it.
    env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.95")
  elif job.kind == "run":
    env["JAX_PLATFORMS"] = "cpu"  # PyTorch runs: keep JAX off the device entirely
  with tempfile.TemporaryDirectory() as tmp:
    out = pathlib.Path(tmp) / "result.json"
    cmd = [sys.executable, "-m", "benchmarks.train_step", "--job", job.to_json(),
           "--job-out", str(out)]
    try:
      proc = subprocess.run(cmd, cwd=ROOT, env=env, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
      return dict(kind=job.kind, side=job.side, variant=job.variant.label(), dtype=job.dtype,
                  error=f"timed out after {timeout:.0f}s")
    if not out.exists():
      return dict(kind=job.kind, side=job.side, variant=job.variant.label(), dtype=job.dtype,
                  error=f"child process exited with status {proc.returncode} and no result")
    return json.loads(out.read_text())


def plan_jobs(args: argparse.Namespace) -> list[Job]:
  """The run's jobs, most important first (a time budget cuts the tail)."""
  common = dict(tiny=args.tiny, dtype=args.dtype, batch=args.batch, infer_batch=args.infer_batch,
                seq_len=args.seq_len, num_objects=args.num_objects, steps=args.steps,
                warmup=args.warmup, num_batches=args.num_batches, seed=args.seed,
                check_batch=args.check_batch, max_batch_granule=args.max_batch_granule,
                max_batch_probes=args.max_batch_probes,
                torch_compile_mode=args.torch_compile_mode)
  best = Variant(attention=args.attention, mlm_gather=args.mlm_gather, prng=args.prng,
                 donate=args.donate)
  jobs = []
  if args.check:
    jobs.append(Job(kind="check", variant=best, **common))
  for side in args.sides:
    jobs.append(Job(kind="run", side=side, variant=best, infer=args.infer, **common))
  if args.ladder and "ours" in args.sides:
    jobs += [Job(kind="run", side="ours", variant=v, infer=False, **common)
             for v in lever_ladder(best) if v != best]
  if args.max_batch:
    jobs.append(Job(kind="max_batch", variant=best, **common))
  return jobs


def run_all(args: argparse.Namespace) -> list[dict[str, Any]]:
  results = []
  start = time.perf_counter()
  for job in plan_jobs(args):
    remaining = None if args.time_budget is None else args.time_budget - (
        time.perf_counter() - start)
    if remaining is not None and remaining < 10:
      results.append(dict(kind=job.kind, side=job.side, variant=job.variant.label(),
                          dtype=job.dtype, error="skipped: time budget spent"))
      continue
    log(f"{job.kind} {job.side} [{job.variant.label()}] dtype={job.dtype} batch={job.batch}")
    result = run_isolated(job, remaining) if args.isolate else run_job(job)
    results.append(result)
  return results


# --- Report --------------------------------------------------------------------


def build_report(args: argparse.Namespace, results: list[dict[str, Any]]) -> dict[str, Any]:
  config = LxmertConfig(**model_fields(args.tiny))
  answers = vqa_answers(args.tiny)
  breakdown = forward_flops(config, args.seq_len, args.num_objects)
  devices = sorted({r["device"] for r in results if r.get("device")})
  check = next((r for r in results if r["kind"] == "check"), None)
  max_batch = next((r for r in results if r["kind"] == "max_batch"), None)
  return dict(
      command=" ".join([os.path.basename(sys.executable), "-m", "benchmarks.train_step"]
                       + sys.argv[1:]),
      settings=dict(model="tiny" if args.tiny else "base (9/5/5, hidden 768, 9500 answers)",
                    dtype=args.dtype, batch=args.batch, infer_batch=args.infer_batch,
                    seq_len=args.seq_len, num_objects=args.num_objects, steps=args.steps,
                    warmup=args.warmup, isolated=args.isolate, vqa_answers=answers,
                    optimizer=f"AdamW lr {LEARNING_RATE} wd {WEIGHT_DECAY} eps {ADAM_EPS}, "
                              f"global-norm clip {CLIP_NORM}",
                    mlm_capacity=mlm_capacity(args.batch, args.seq_len)),
      flops=dict(train_per_example=train_flops_per_example(config, args.seq_len,
                                                           args.num_objects),
                 forward_per_example=sum(breakdown.values()),
                 forward_breakdown=breakdown,
                 infer_per_example=infer_flops_per_example(config, args.seq_len,
                                                           args.num_objects, answers)),
      environment=dict(devices=devices, gpu=gpu_driver(), versions=package_versions(),
                       host=platform.node(), cpu_count=os.cpu_count()),
      check=None if check is None else check.get("check") or {"error": check.get("error")},
      max_batch=None if max_batch is None else (max_batch.get("max_batch")
                                                or {"error": max_batch.get("error")}),
      runs=[r for r in results if r["kind"] == "run"],
      skipped_or_failed=[{k: r.get(k) for k in ("kind", "side", "variant", "error")}
                         for r in results if r.get("error")])


def _fmt(x: Optional[float], spec: str) -> str:
  return "-" if x is None else format(x, spec)


def markdown(report: Mapping[str, Any]) -> str:
  """The report as markdown tables (train, inference, checks, max batch)."""
  s, f, env = report["settings"], report["flops"], report["environment"]
  versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items())
  lines = [f"device: {', '.join(env['devices']) or 'unknown'}"
           + (f" (nvidia-smi: {env['gpu']})" if env["gpu"] else ""),
           f"versions: {versions}",
           f"model: {s['model']}; T={s['seq_len']}, O={s['num_objects']}, {s['dtype']}; "
           f"{s['optimizer']}",
           f"model FLOPs/example (reference count): train {f['train_per_example'] / 1e9:.2f} G "
           f"(3 x forward {f['forward_per_example'] / 1e9:.2f} G), VQA inference "
           f"{f['infer_per_example'] / 1e9:.2f} G", ""]
  runs = [r for r in report["runs"] if not r.get("error")]
  reference = {part: next((r[part]["examples_per_s"] for r in runs
                           if r["side"] == "torch-compile" and part in r), None)
               for part in ("train", "infer")}
  for part, title, batch in (("train", "Train step", s["batch"]),
                             ("infer", "Inference (VQA forward)", s["infer_batch"])):
    rows = [r for r in runs if part in r]
    if not rows:
      continue
    lines += [f"#### {title}, batch {batch}", "",
              "| side | levers | ex/s | step ms p10 / p50 / p90 | pipelined ms | MFU "
              "| peak mem GiB | compile/first s | vs torch.compile |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
      m = r[part]
      levers = (r["variant"].replace("attn=auto", f"attn={m.get('attention')}")
                if r["side"] == "ours" else "bf16 autocast" if r["dtype"] == "bf16" else "fp32")
      ratio = (None if reference[part] is None
               else m["examples_per_s"] / reference[part])
      lines.append(
          f"| {r['side']} | {levers} | {m['examples_per_s']:,.0f} | {m['p10_ms']:.2f} / "
          f"{m['median_ms']:.2f} / {m['p90_ms']:.2f} | {m['pipelined_ms']:.2f} | "
          f"{_fmt(None if m['mfu'] is None else 100 * m['mfu'], '.1f')}"
          f"{'' if m['mfu'] is None else '%'} | {gib(m['peak_bytes'])} | "
          f"{m['compile_s']:.1f} | {_fmt(ratio, '.2f')}{'' if ratio is None else 'x'} |")
    lines.append("")
  check = report.get("check")
  if check:
    if "error" in check:
      lines += [f"check: FAILED to run: {check['error']}", ""]
    else:
      lines += [f"#### Checks (batch {check['batch']})", "",
                f"fp32 vs transformers: {'PASS' if check['fp32']['passed'] else 'FAIL'} "
                f"(tolerance {check['fp32']['tolerance']:g}); bf16 "
                f"(attention {check['bf16_attention']}) vs our fp32: "
                f"{'PASS' if check['bf16']['passed'] else 'FAIL'} "
                f"(tolerance {check['bf16']['tolerance']:g})", "",
                "| quantity | fp32 ours vs torch | bf16 ours vs fp32 ours "
                "| torch bf16 autocast vs fp32 |", "|---|---|---|---|"]
      keys = list(dict.fromkeys(list(check["fp32"]["max_rel_error"])
                                + list(check["bf16"]["max_rel_error"])))
      for k in keys:
        lines.append(f"| {k} | {_fmt(check['fp32']['max_rel_error'].get(k), '.2e')} | "
                     f"{_fmt(check['bf16']['max_rel_error'].get(k), '.2e')} | "
                     f"{_fmt(check['bf16']['torch_autocast_max_rel_error'].get(k), '.2e')} |")
      lines.append("")
  mb = report.get("max_batch")
  if mb:
    if mb.get("error"):
      lines.append(f"max batch: failed: {mb['error']}")
    elif mb.get("batch") is None:
      lines.append(f"max batch: {mb.get('note', 'none fits')}")
    else:
      lines.append(f"max batch (ours, {mb['variant']}): {mb['batch']} (granule "
                   f"{mb['granule']}, JAX memory limit {gib(mb['bytes_limit'])} GiB, "
                   f"XLA_PYTHON_CLIENT_MEM_FRACTION {mb['mem_fraction']})")
  for r in report["skipped_or_failed"]:
    lines.append(f"not measured: {r['kind']} {r['side']} [{r['variant']}]: "
                 f"{(r['error'] or '').splitlines()[0][:300]}")
  return "\n".join(lines)


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--tiny", action="store_true",
                 help="tiny model, batch 8, few steps, in-process: a CPU functional check")
  p.add_argument("--sides", default=None,
                 help=f"comma-separated subset of {','.join(SIDES)} (default: all; with "
                      "--tiny: ours,torch-eager)")
  p.add_argument("--batch", type=int, default=None, help="train batch (default 256; tiny 8)")
  p.add_argument("--infer-batch", type=int, default=None, help="inference batch (default: --batch)")
  p.add_argument("--steps", type=int, default=None, help="timed steps (default 50; tiny 3)")
  p.add_argument("--warmup", type=int, default=None, help="warm-up steps (default 10; tiny 1)")
  p.add_argument("--seq-len", type=int, default=20)
  p.add_argument("--num-objects", type=int, default=36)
  p.add_argument("--num-batches", type=int, default=2,
                 help="distinct device-resident batches rotated through")
  p.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16",
                 help="compute dtype on both sides (parameters stay fp32)")
  p.add_argument("--attention", choices=("auto", "reference", "xla", "cudnn"), default="auto",
                 help="our attention implementation (auto: cudnn on GPU in bf16, else xla)")
  p.add_argument("--mlm-gather", action=argparse.BooleanOptionalAction, default=True,
                 help="our MLM decoder on the masked positions only")
  p.add_argument("--prng", choices=("threefry", "rbg", "unsafe_rbg"), default="rbg",
                 help="jax_default_prng_impl for our dropout masks")
  p.add_argument("--donate", action=argparse.BooleanOptionalAction, default=True,
                 help="donate our train state to the step")
  p.add_argument("--ladder", action="store_true",
                 help="also time ours once per cumulative lever, from the plain model")
  p.add_argument("--infer", action=argparse.BooleanOptionalAction, default=True,
                 help="also time inference (VQA forward)")
  p.add_argument("--check", action=argparse.BooleanOptionalAction, default=True,
                 help="fp32 parity with transformers and bf16-vs-fp32 checks")
  p.add_argument("--check-batch", type=int, default=4)
  p.add_argument("--max-batch", action="store_true",
                 help="search the largest batch our train step fits (several compiles)")
  p.add_argument("--max-batch-granule", type=int, default=None,
                 help="resolution of the search (default 64; tiny 8)")
  p.add_argument("--max-batch-probes", type=int, default=6)
  p.add_argument("--torch-compile-mode", default="default",
                 choices=("default", "reduce-overhead", "max-autotune",
                          "max-autotune-no-cudagraphs"))
  p.add_argument("--isolate", action=argparse.BooleanOptionalAction, default=None,
                 help="one child process per measurement (default: on, off with --tiny)")
  p.add_argument("--time-budget", type=float, default=None,
                 help="seconds; jobs that would start later are skipped and reported")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", default=None, help="write all results as JSON here")
  p.add_argument("--job", default=None, help=argparse.SUPPRESS)
  p.add_argument("--job-out", default=None, help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  tiny = args.tiny
  args.sides = tuple((args.sides or ("ours,torch-eager" if tiny else ",".join(SIDES))).split(","))
  unknown = sorted(set(args.sides) - set(SIDES))
  if unknown:
    p.error(f"--sides: unknown {unknown}; expected a subset of {SIDES}")
  args.batch = args.batch or (8 if tiny else 256)
  args.infer_batch = args.infer_batch or args.batch
  args.steps = args.steps or (3 if tiny else 50)
  args.warmup = args.warmup if args.warmup is not None else (1 if tiny else 10)
  args.max_batch_granule = args.max_batch_granule or (8 if tiny else 64)
  args.isolate = (not tiny) if args.isolate is None else args.isolate
  return args


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = parse_args(argv)
  if args.job:
    result = run_job(Job.from_json(args.job))
    pathlib.Path(args.job_out).write_text(json.dumps(result))
    return 0
  results = run_all(args)
  report = build_report(args, results)
  if args.out:
    pathlib.Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
  print(markdown(report), flush=True)
  check = report["check"]
  failed = bool(report["skipped_or_failed"]) or (
      check is not None and not (check.get("fp32", {}).get("passed")
                                 and check.get("bf16", {}).get("passed")))
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
