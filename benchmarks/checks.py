"""Correctness checks run before timing: the two sides compute the same function.

(a) transformers' `LxmertForPreTraining` with random weights is converted to
ours with `lxmert_jax.convert`; both run in eval mode with true fp32 matmuls
(`allow_tf32=False`, `jax.default_matmul_precision('float32')`), and every
output and loss term must agree to `FP32_TOL` relative, including the MLM
and feature-regression losses with their decoders on the gathered masked
rows. (b) the same weights with bf16
compute and the run's attention implementation must stay within `BF16_TOL`
of our fp32 outputs; transformers' own bf16-autocast error is reported next
to it for scale.
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import jax_side, torch_side, workload
from benchmarks.workload import Job
from lxmert_jax import convert
from lxmert_jax.objectives import losses
from lxmert_jax.objectives import masked_decoding
from lxmert_jax.model.config import LxmertConfig
from lxmert_jax.model.task_models import LxmertForPreTraining

OUTPUTS = ("prediction_logits", "cross_relationship_score", "question_answering_score")
# Decoding gathered rows is checked even when the timed runs decode every
# row, at the training config's default fractions.
CHECK_DECODE_FRACTION = 0.25


def _rel(a: float, b: float) -> float:
  return abs(a - b) / max(abs(b), 1e-30)


def _torch_outputs(out: Any) -> dict[str, np.ndarray]:
  fields = {k: getattr(out, k) for k in OUTPUTS}
  fields["language_output"] = out.language_hidden_states[-1]
  fields["vision_output"] = out.vision_hidden_states[-1]
  return {k: v.float().cpu().numpy() for k, v in fields.items()}


def _ours(config: LxmertConfig, state_dict: dict[str, np.ndarray], batch: dict[str, Any],
          slots: Optional[tuple[int, int]]) -> tuple[dict[str, np.ndarray], dict[str, float]]:
  """Our outputs and loss terms; with `slots` (MLM, feature), also the MLM and
  feature losses with their decoders on that many gathered masked rows."""
  model = LxmertForPreTraining(config)
  params = convert.state_dict_to_params(state_dict, model, source="transformers model")

  def forward(p, b):
    inputs = {k: b[k] for k in workload.MODEL_INPUTS}
    out = model.apply({"params": p}, **inputs, deterministic=True)
    total, terms = losses.pretraining_losses(out, b, config)
    outputs = {k: getattr(out, k) for k in OUTPUTS}
    outputs.update(language_output=out.language_output, vision_output=out.vision_output,
                   **{f"visual_{k}": v for k, v in out.visual_prediction.items()})
    terms = dict(terms, total=total)
    if slots is not None:
      positions, gathered, overflow = masked_decoding.gathered_batch(b, *slots)
      _, gathered_terms = losses.pretraining_losses(
          model.apply({"params": p}, **inputs, **positions, deterministic=True), gathered,
          config)
      for key in ("mlm", "feat"):
        # More masked rows than slots would drop some: a failure, not a pass.
        terms[f"{key} (decoder on gathered rows)"] = jnp.where(
            overflow, jnp.nan, gathered_terms[key])
    return outputs, terms

  outputs, terms = jax.device_get(jax.jit(forward)(params, batch))
  return ({k: np.asarray(v, np.float32) for k, v in outputs.items()},
          {k: float(v) for k, v in terms.items()})


def run(job: Job) -> dict[str, Any]:
  """Both checks on a `job.check_batch` batch; see the module docstring."""
  torch, transformers = torch_side.modules()
  dev = torch_side.device()
  torch.backends.cuda.matmul.allow_tf32 = False
  torch.backends.cudnn.allow_tf32 = False
  torch.manual_seed(job.seed)
  fields = workload.model_fields(job.tiny)
  with torch.device(dev):
    hf = transformers.LxmertForPreTraining(transformers.LxmertConfig(**fields)).eval()
  state_dict = {k: v.detach().float().cpu().numpy() for k, v in hf.state_dict().items()}
  config = LxmertConfig(**fields)
  data = workload.synthetic_batch(config, job.check_batch, job.seq_len, job.num_objects,
                                  job.seed + 7)
  inputs, labels = torch_side.to_torch(data, dev)
  with torch.no_grad():
    ref = hf(**inputs, **labels, output_hidden_states=True)
    with torch_side.autocast("bf16"):
      ref_bf16 = _torch_outputs(hf(**inputs, output_hidden_states=True))
  ref_out = _torch_outputs(ref)
  ref_terms = dict(torch_side.loss_terms(hf, inputs, labels), total=float(ref.loss))

  batch = jax.device_put(data)
  with jax.default_matmul_precision("float32"):
    slots = tuple(masked_decoding.capacity(fraction or CHECK_DECODE_FRACTION, rows)
                  for fraction, rows in ((job.variant.mlm_fraction, job.check_batch * job.seq_len),
                                         (job.variant.feat_fraction,
                                          job.check_batch * job.num_objects)))
    out32, terms32 = _ours(config, state_dict, batch, slots)
  fp32 = {f"output/{k}": workload.max_rel_error(out32[k], v) for k, v in ref_out.items()}
  fp32.update({f"loss/{k}": _rel(v, ref_terms[k.split(" ")[0]]) for k, v in terms32.items()})

  attention, _ = jax_side.resolve_attention(job, "bf16")
  bf16: dict[str, Any] = dict(tolerance=workload.BF16_TOL, attention=attention,
                              torch_autocast_max_rel_error={
                                  f"output/{k}": workload.max_rel_error(v, ref_out[k])
                                  for k, v in ref_bf16.items()})
  try:
    cfg16 = config.replace(dtype="bfloat16", attention_implementation=attention)
    out16, terms16 = _ours(cfg16, state_dict, batch, None)
    errors = {f"output/{k}": workload.max_rel_error(v, out32[k]) for k, v in out16.items()}
    errors.update({f"loss/{k}": _rel(v, terms32[k]) for k, v in terms16.items()})
    bf16.update(max_rel_error=errors, passed=all(v <= workload.BF16_TOL for v in errors.values()))
  except Exception as e:  # pylint: disable=broad-except
    bf16.update(max_rel_error={}, passed=False, error=f"{type(e).__name__}: {e}")
  return dict(batch=job.check_batch,
              fp32=dict(max_rel_error=fp32, tolerance=workload.FP32_TOL,
                        passed=all(v <= workload.FP32_TOL for v in fp32.values())),
              bf16=bf16)
