"""The PyTorch peer: transformers' LXMERT train step and VQA forward, timed.

The train step is what a PyTorch user of transformers runs: the model's own
forward with every pre-training label (it computes the five losses itself),
bf16 autocast over fp32 weights, `loss.backward()`, `clip_grad_norm_` at 1.0
and AdamW (fused on CUDA). `torch-compile` wraps the model in
`torch.compile`; the optimiser stays eager in both.
"""

from __future__ import annotations

import gc
import math
import platform
import time
from typing import Any, Callable, Mapping, Optional

import numpy as np

from benchmarks import workload
from benchmarks.workload import Job
from lxmert_jax.objectives import losses
from lxmert_jax.model.config import LxmertConfig


def modules() -> tuple[Any, Any]:
  """(torch, transformers), imported on first use: our own runs never need them."""
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel
  return torch, transformers


def device() -> Any:
  torch, _ = modules()
  return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def to_torch(batch: Mapping[str, np.ndarray], dev: Any) -> tuple[dict, dict]:
  """(model inputs, pre-training labels in transformers' format) on `dev`."""
  torch, _ = modules()
  t = {k: torch.from_numpy(np.asarray(v)).to(dev) for k, v in batch.items()}
  inputs = dict(input_ids=t["input_ids"].long(), attention_mask=t["attention_mask"].long(),
                token_type_ids=t["token_type_ids"].long(), visual_feats=t["visual_feats"],
                visual_pos=t["visual_pos"])
  labels = dict(labels=t["masked_lm_labels"].long(), matched_label=t["matched_label"].long(),
                ans=t["ans"].long(),
                obj_labels={"obj": (t["obj_labels"].long(), t["obj_conf"]),
                            "attr": (t["attr_labels"].long(), t["attr_conf"]),
                            "feat": (t["feat_targets"], t["feat_mask"])})
  return inputs, labels


def synchronizer() -> Callable[[Any], None]:
  torch, _ = modules()
  if torch.cuda.is_available():
    return lambda _: torch.cuda.synchronize()
  return lambda _: None


def autocast(dtype: str) -> Any:
  torch, _ = modules()
  return torch.autocast("cuda" if torch.cuda.is_available() else "cpu",
                        dtype=torch.bfloat16, enabled=dtype == "bf16")


def _peak_bytes() -> Optional[int]:
  torch, _ = modules()
  return int(torch.cuda.max_memory_allocated()) if torch.cuda.is_available() else None


def _reset_peak() -> None:
  """Frees what earlier measurements left and restarts the peak-memory counter.

  Compiled graphs keep their model alive until dynamo is reset.
  """
  torch, _ = modules()
  gc.collect()
  torch._dynamo.reset()  # pylint: disable=protected-access
  if torch.cuda.is_available():
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()


def _maybe_compile(model: Any, job: Job) -> Any:
  torch, _ = modules()
  if job.side == "torch-eager":
    return model
  return torch.compile(model, mode=None if job.torch_compile_mode == "default"
                       else job.torch_compile_mode)


def _timed(step: Callable[[int], Any], job: Job) -> tuple[dict[str, float], float]:
  """(timing, seconds of the first call: compilation under torch.compile)."""
  sync = synchronizer()
  start = time.perf_counter()
  sync(step(0))
  first_s = time.perf_counter() - start
  return workload.time_steps(step, sync, job.warmup, job.steps), first_s


def bench_train(job: Job, peak: Optional[float]) -> dict[str, Any]:
  """Times transformers' `LxmertForPreTraining` train step at `job.batch`."""
  torch, transformers = modules()
  dev = device()
  torch.backends.cuda.matmul.allow_tf32 = True  # fp32 runs time TF32 matmuls, as JAX does
  torch.manual_seed(job.seed)
  fields = workload.model_fields(job.tiny)
  config = LxmertConfig(**fields)
  with torch.device(dev):
    model = transformers.LxmertForPreTraining(transformers.LxmertConfig(**fields)).train()
  opt = torch.optim.AdamW(model.parameters(), lr=workload.LEARNING_RATE, betas=(0.9, 0.999),
                          eps=workload.ADAM_EPS, weight_decay=workload.WEIGHT_DECAY,
                          fused=dev.type == "cuda")
  forward = _maybe_compile(model, job)
  batches = [to_torch(workload.synthetic_batch(config, job.batch, job.seq_len,
                                               job.num_objects, job.seed + 100 + i), dev)
             for i in range(job.num_batches)]
  _reset_peak()

  def step(i: int):
    inputs, labels = batches[i % len(batches)]
    with autocast(job.dtype):
      loss = forward(**inputs, **labels).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), workload.CLIP_NORM)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss

  timing, first_s = _timed(step, job)
  loss = float(step(0).detach())
  if not math.isfinite(loss):
    raise RuntimeError(f"non-finite loss {loss}")
  flops = workload.train_flops_per_example(config, job.seq_len, job.num_objects)
  return dict(timing, **workload.throughput(timing, job.batch, flops, peak), compile_s=first_s,
              peak_bytes=_peak_bytes(), loss=loss, attention="reference",
              mlm_positions=job.batch * job.seq_len, feat_boxes=job.batch * job.num_objects)


def bench_infer(job: Job, peak: Optional[float]) -> dict[str, Any]:
  """Times transformers' `LxmertForQuestionAnswering` forward at `job.infer_batch`."""
  torch, transformers = modules()
  dev = device()
  torch.backends.cuda.matmul.allow_tf32 = True
  torch.manual_seed(job.seed)
  answers = workload.vqa_answers(job.tiny)
  fields = dict(workload.model_fields(job.tiny), num_qa_labels=answers)
  config = LxmertConfig(**fields)
  with torch.device(dev):
    model = transformers.LxmertForQuestionAnswering(transformers.LxmertConfig(**fields)).eval()
  forward = _maybe_compile(model, job)
  batches = [to_torch(workload.synthetic_batch(config, job.infer_batch, job.seq_len,
                                               job.num_objects, job.seed + 100 + i, answers),
                      dev)[0]
             for i in range(job.num_batches)]
  _reset_peak()

  def step(i: int):
    with torch.inference_mode(), autocast(job.dtype):
      return forward(**batches[i % len(batches)]).question_answering_score

  timing, first_s = _timed(step, job)
  flops = workload.infer_flops_per_example(config, job.seq_len, job.num_objects, answers)
  return dict(timing, **workload.throughput(timing, job.infer_batch, flops, peak),
              compile_s=first_s, peak_bytes=_peak_bytes(), attention="reference")


def loss_terms(hf: Any, inputs: Mapping[str, Any], labels: Mapping[str, Any]) -> dict[str, float]:
  """Each loss term as transformers computes it, by passing only that term's labels.

  A visual term passes all three visual labels with the other two weights
  zeroed (transformers needs every enabled visual label).
  """
  torch, _ = modules()
  single = {"mlm": "labels", "matched": "matched_label", "qa": "ans"}
  terms = {}
  with torch.no_grad():
    for term in losses.LOSS_TERMS:
      if term in single:
        kwargs = {single[term]: labels[single[term]]}
      else:
        kwargs = {"obj_labels": {k: (v[0], v[1] if k == term else torch.zeros_like(v[1]))
                                 for k, v in labels["obj_labels"].items()}}
      terms[term] = float(hf(**inputs, **kwargs).loss)
  return terms


def device_info() -> dict[str, Any]:
  torch, _ = modules()
  info: dict[str, Any] = dict(torch_cuda=torch.version.cuda,
                              torch_cudnn=torch.backends.cudnn.version())
  if torch.cuda.is_available():
    info.update(device=torch.cuda.get_device_name(0), platform="gpu")
  else:
    info.update(device=platform.processor() or platform.machine(), platform="cpu")
  return info
