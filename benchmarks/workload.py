"""What the benchmark measures: the jobs, the FLOP count, the data and the timer.

Shared by both sides, so that ours and the PyTorch peer run on the same
shapes, the same synthetic batches and the same clock.
"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any, Callable, Mapping, Optional

import numpy as np

from lxmert_jax.objectives import losses
from lxmert_jax.model.config import LxmertConfig

SIDES = ("ours", "torch-eager", "torch-compile")
MODEL_INPUTS = ("input_ids", "visual_feats", "visual_pos", "attention_mask", "token_type_ids")
VQA_ANSWERS = 3129
CLS_ID, SEP_ID, MASK_ID = 101, 102, 103
MLM_RATE = 0.15  # word pieces masked for the MLM loss, and boxes for the feature loss
LEARNING_RATE, WEIGHT_DECAY, ADAM_EPS, CLIP_NORM = 1e-4, 0.01, 1e-6, 1.0
FP32_TOL = 1e-4
# bf16 keeps 8 significant bits; through 19 post-LN layers the outputs of the
# base model drift by 1-2% of their largest value (measured on random
# weights), as much as transformers' own bf16 autocast does.
BF16_TOL = 5e-2

# A small model of the same structure, for CPU runs of every code path.
TINY_MODEL = dict(vocab_size=512, hidden_size=64, num_attention_heads=4, intermediate_size=128,
                  l_layers=1, r_layers=1, x_layers=1, visual_feat_dim=64, num_qa_labels=32,
                  num_object_labels=40, num_attr_labels=16)
TINY_VQA_ANSWERS = 24

# Dense matrix-unit peaks from vendor datasheets, TFLOP/s: (bf16, tf32). The
# fp32 runs use TF32 matmuls (JAX's default on these GPUs, and PyTorch's with
# `allow_tf32`), so their MFU is against the TF32 peak.
PEAK_TFLOPS = (("H100 PCIe", (756.0, 378.0)), ("H100 NVL", (835.0, 418.0)),
               ("H100", (989.4, 494.7)), ("H200", (989.4, 494.7)),
               ("A100", (312.0, 156.0)))


@dataclasses.dataclass(frozen=True)
class Variant:
  """Our speed levers; none changes the loss function.

  The fused attention implementations leave out the dropout on attention
  probabilities, which the written-out one keeps.

  Attributes:
    attention: `reference` (softmax written out, attention-probability dropout
      as the reference), `xla` or `cudnn` (`jax.nn.dot_product_attention`, no
      attention-probability dropout), or `auto` (cudnn where it can run the
      model, which needs a GPU and bf16, else xla).
    mlm_fraction: `mlm_decode_fraction` of the training config: when > 0, the
      MLM decoder runs on the labelled text positions gathered into
      `masked_decoding.capacity(fraction, B*T)` slots instead of all B*T,
      falling back to all positions (`lax.cond`) for a batch with more
      labels; 0 decodes every position.
    feat_fraction: `feat_decode_fraction`: the same for the feature-regression
      decoder and the masked boxes among B*O.
    prng: `jax_default_prng_impl` for the dropout masks.
    donate: donate the train state to the step (updated in place).
  """

  attention: str = "auto"
  mlm_fraction: float = 0.25
  feat_fraction: float = 0.25
  prng: str = "rbg"
  donate: bool = True

  def label(self) -> str:
    def rows(fraction: float) -> str:
      return f"gathered<={fraction:g}" if fraction > 0 else "all"
    return (f"attn={self.attention} mlm={rows(self.mlm_fraction)} "
            f"feat={rows(self.feat_fraction)} "
            f"prng={self.prng}{' donate' if self.donate else ''}")


BASELINE = Variant(attention="reference", mlm_fraction=0.0, feat_fraction=0.0,
                   prng="threefry2x32", donate=True)


def lever_ladder(best: Variant) -> list[Variant]:
  """Rungs from the plain model to `best`, one more lever per rung.

  The PRNG, then MLM gathering, then feature-decoder gathering, then the
  attention implementation are added in turn; a last rung takes donation
  away from `best` to show what it buys.
  """
  prng = dataclasses.replace(BASELINE, prng=best.prng)
  mlm = dataclasses.replace(prng, mlm_fraction=best.mlm_fraction)
  feat = dataclasses.replace(mlm, feat_fraction=best.feat_fraction)
  rungs = [BASELINE, prng, mlm, feat, best, dataclasses.replace(best, donate=False)]
  return list(dict.fromkeys(rungs))


@dataclasses.dataclass(frozen=True)
class Job:
  """One measurement, run in this process or in a child process."""

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

  def describe(self) -> str:
    levers = f" [{self.variant.label()}]" if self.side == "ours" or self.kind != "run" else ""
    return f"{self.kind} {self.side}{levers} dtype={self.dtype} batch={self.batch}"

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
  count. With D hidden, F the FFN width, T text positions, O objects:

  * attention with queries from a stream of length Q and keys/values from
    one of length K: Q/K/V projections 2QD^2 + 4KD^2, scores and context
    4QKD, output projection 2QD^2;
  * an L layer (S = T) or R layer (S = O): attention(S, S) + FFN 4SDF;
  * an X layer: the shared cross-attention in both directions,
    attention(T, O) + attention(O, T), the two self-attentions
    attention(T, T) + attention(O, O), and the two FFNs 4(T + O)DF;
  * visual feature encoder 2O(F_v + 4)D, pooler 2D^2;
  * pre-training heads (`head="pretraining"`): MLM transform 2TD^2 and
    decoder 2TDV over all T positions (the reference decodes every position;
    decoding only the masked ones is our lever and is not credited), matching
    4D, object head transform 2OD^2 and decoders 2OD(objects + attributes +
    F_v); answer head 2D(2D) + 2(2D)A (both heads).

  A training step counts 3x the forward (the backward is 2x the forward).
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
  if head == "pretraining":
    out["mlm_head"] = 2 * t * d * d + 2 * t * d * c.vocab_size
    out["match_head"] = 2 * d * 2
    out["object_head"] = 2 * o * d * d + 2 * o * d * (
        c.num_object_labels + c.num_attr_labels + c.visual_feat_dim)
  answers = c.num_qa_labels if num_answers is None else num_answers
  out["answer_head"] = 2 * d * 2 * d + 2 * 2 * d * answers
  return out


def train_flops_per_example(config: LxmertConfig, seq_len: int, num_objects: int) -> int:
  return 3 * sum(forward_flops(config, seq_len, num_objects).values())


def infer_flops_per_example(config: LxmertConfig, seq_len: int, num_objects: int,
                            num_answers: int) -> int:
  return sum(forward_flops(config, seq_len, num_objects, "qa", num_answers).values())


def peak_flops(device_name: str, dtype: str) -> Optional[float]:
  """The datasheet dense matrix peak of a GPU in FLOP/s, None when unknown."""
  for key, (bf16, tf32) in PEAK_TFLOPS:
    if key in device_name:
      return 1e12 * (bf16 if dtype == "bf16" else tf32)
  return None


# --- Synthetic batches ---------------------------------------------------------


def synthetic_batch(config: LxmertConfig, batch: int, seq_len: int, num_objects: int,
                    seed: int, num_answers: Optional[int] = None) -> dict[str, np.ndarray]:
  """A pre-training batch shaped and labelled like the reference pipeline's.

  Sentences of 5..T-2 word pieces between [CLS] and [SEP], then padding; each
  word piece masked with probability 0.15 (MLM label = the original id); half
  the pairs mismatched; a QA label on two thirds of the matched pairs; boxes
  with non-negative features, each masked (features zeroed, regression
  target = the original features) with probability 0.15. Random, never
  zeros, so that no shortcut in either framework makes the work cheaper.
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
      # Every box is real, as in the training loader's batches (which carry
      # the mask); transformers' peer is given none, which means the same.
      visual_attention_mask=np.ones((b, o), np.int32),
      masked_lm_labels=mlm_labels.astype(np.int32), matched_label=matched.astype(np.int32),
      ans=ans.astype(np.int32),
      obj_labels=rng.integers(0, config.num_object_labels, (b, o)).astype(np.int32),
      obj_conf=rng.uniform(size=(b, o)).astype(np.float32),
      attr_labels=rng.integers(0, config.num_attr_labels, (b, o)).astype(np.int32),
      attr_conf=rng.uniform(size=(b, o)).astype(np.float32),
      feat_targets=feats, feat_mask=feat_mask)


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
  """Examples/s, model TFLOP/s and MFU from the median step time."""
  per_s = batch / (timing["median_ms"] / 1e3)
  achieved = per_s * flops_per_example
  return dict(examples_per_s=per_s, model_tflops=achieved / 1e12,
              mfu=None if peak is None else achieved / peak)


def max_rel_error(ours: Any, reference: Any) -> float:
  """max |ours - reference| / max |reference|, in float64."""
  a = np.asarray(ours, np.float64)
  b = np.asarray(reference, np.float64)
  return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-30))


# --- Max-batch search ----------------------------------------------------------


@dataclasses.dataclass
class Probe:
  """One batch size tried by the max-batch search."""

  batch: int
  fits: bool
  memory_bytes: Optional[float] = None
  note: str = ""


def search_max_batch(probe: Callable[[int], Probe], start: int, granule: int,
                     limit_bytes: Optional[float], max_probes: int
                     ) -> tuple[Optional[int], list[Probe]]:
  """The largest multiple of `granule` that fits, in few (expensive) probes.

  A probe compiles the step and, when XLA's memory estimate fits, runs it.
  The next size is where the line through the last two estimates meets
  `limit_bytes`, clamped one granule inside the bracket of sizes known to fit
  and to fail (so a good estimate ends with the two neighbours of the limit);
  without an estimate the search doubles until a failure, then bisects.

  Returns:
    (largest batch seen to fit or None, the probes in order).
  """
  probes: list[Probe] = []
  lo, hi = 0, None
  b = start
  while True:
    p = probe(b)
    probes.append(p)
    if p.fits:
      lo = max(lo, b)
    else:
      hi = b if hi is None else min(hi, b)
    if (hi is not None and hi - lo <= granule) or len(probes) >= max_probes:
      break
    known = [q for q in probes if q.memory_bytes]
    candidate = None
    if limit_bytes and len(known) >= 2 and known[-1].batch != known[-2].batch:
      q1, q2 = known[-2], known[-1]
      slope = (q2.memory_bytes - q1.memory_bytes) / (q2.batch - q1.batch)
      if slope > 0:
        predicted = q2.batch + (limit_bytes - q2.memory_bytes) / slope
        candidate = max(granule * int(predicted // granule), lo + granule)
        if hi is not None:
          candidate = min(candidate, hi - granule)
    if candidate is None or any(q.batch == candidate for q in probes):
      candidate = 2 * lo if hi is None else granule * ((lo + hi) // (2 * granule))
    if candidate <= lo or any(q.batch == candidate for q in probes):
      break
    b = candidate
  return (lo or None), probes


def log(message: str) -> None:
  print(f"[bench] {message}", flush=True)


def gib(n: Optional[float]) -> str:
  return "-" if n is None else f"{n / 2**30:.1f}"
