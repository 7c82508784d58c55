"""Numerical parity with transformers' PyTorch LXMERT on random weights (fp32)."""

from __future__ import annotations

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import lxmert_jax  # pylint: disable=wrong-import-position
from lxmert_jax import convert  # pylint: disable=wrong-import-position
from model_utils import TINY, max_rel_error, random_inputs, random_pretraining_labels  # pylint: disable=wrong-import-position

TOL = 1e-5


def torch_pair(arch: str, seed: int = 0, **overrides):
  """A randomly initialised transformers model and our converted copy."""
  torch.manual_seed(seed)
  hf = getattr(transformers, arch)(transformers.LxmertConfig(**dict(TINY, **overrides))).eval()
  state = {k: v.detach().numpy() for k, v in hf.state_dict().items()}
  model = getattr(lxmert_jax, arch)(lxmert_jax.LxmertConfig(**dict(TINY, **overrides)))
  return hf, model, convert.state_dict_to_params(state, model)


def torch_inputs(inputs):
  return {k: torch.tensor(v) for k, v in inputs.items()}


def torch_labels(labels):
  t = {k: torch.tensor(v) for k, v in labels.items()}
  return dict(labels=t["masked_lm_labels"], matched_label=t["matched_label"], ans=t["ans"],
              obj_labels={"obj": (t["obj_labels"], t["obj_conf"]),
                          "attr": (t["attr_labels"], t["attr_conf"]),
                          "feat": (t["feat_targets"], t["feat_mask"])})


LAYOUTS = [  # (batch, l_layers, r_layers, x_layers)
    (1, 1, 1, 1),
    (3, 2, 1, 2),
    (3, 3, 2, 1),
]


@pytest.mark.parametrize("batch,l_layers,r_layers,x_layers", LAYOUTS)
@pytest.mark.parametrize("with_visual_mask", [True, False])
def test_pretraining_outputs_match_transformers(batch, l_layers, r_layers, x_layers,
                                                with_visual_mask):
  hf, model, params = torch_pair("LxmertForPreTraining", seed=batch + l_layers,
                                 l_layers=l_layers, r_layers=r_layers, x_layers=x_layers)
  inputs = random_inputs(batch, seed=batch)
  if not with_visual_mask:
    inputs.pop("visual_attention_mask")
  with torch.no_grad():
    ref = hf(**torch_inputs(inputs), output_hidden_states=True, output_attentions=True)
  with jax.default_matmul_precision("float32"):
    out = model.apply({"params": params}, **inputs, output_hidden_states=True,
                      output_attentions=True)
  for field in ("prediction_logits", "cross_relationship_score", "question_answering_score"):
    assert max_rel_error(getattr(out, field), getattr(ref, field)) <= TOL, field
  assert max_rel_error(out.language_output, ref.language_hidden_states[-1]) <= TOL
  assert max_rel_error(out.vision_output, ref.vision_hidden_states[-1]) <= TOL
  for field in ("language_hidden_states", "vision_hidden_states", "language_attentions",
                "vision_attentions", "cross_encoder_attentions"):
    ours, theirs = getattr(out, field), getattr(ref, field)
    assert len(ours) == len(theirs), field
    for i, (a, b) in enumerate(zip(ours, theirs)):
      assert a.shape == tuple(b.shape), (field, i)
      assert max_rel_error(a, b) <= TOL, (field, i)


def _hf_term(hf, inputs, labels, term):
  """One loss term from transformers, by passing only that term's labels."""
  t = torch_labels(labels)
  if term in ("obj", "attr", "feat"):
    zero = {k: (v[0], torch.zeros_like(v[1])) for k, v in t["obj_labels"].items()}
    kwargs = {"obj_labels": dict(zero, **{term: t["obj_labels"][term]})}
  else:
    kwargs = {{"mlm": "labels", "matched": "matched_label", "qa": "ans"}[term]:
              t[{"mlm": "labels", "matched": "matched_label", "qa": "ans"}[term]]}
  with torch.no_grad():
    return float(hf(**torch_inputs(inputs), **kwargs).loss)


@pytest.mark.parametrize("batch", [1, 3])
def test_pretraining_loss_and_terms_match_transformers(batch):
  hf, model, params = torch_pair("LxmertForPreTraining", seed=7)
  inputs = random_inputs(batch, seed=11)
  labels = random_pretraining_labels(inputs, seed=12)
  if batch == 1:
    labels["ans"][:] = 3
  with torch.no_grad():
    ref_total = float(hf(**torch_inputs(inputs), **torch_labels(labels)).loss)
  with jax.default_matmul_precision("float32"):
    out = model.apply({"params": params}, **inputs, labels=labels["masked_lm_labels"],
                      matched_label=labels["matched_label"], ans=labels["ans"],
                      obj_labels=lxmert_jax.objectives.losses.batch_visual_labels(labels))
    outputs_only = model.apply({"params": params}, **inputs)
    total, terms = lxmert_jax.objectives.losses.pretraining_losses(outputs_only, labels, model.config)
  assert abs(float(out.loss) - ref_total) <= TOL * abs(ref_total)
  assert abs(float(total) - ref_total) <= TOL * abs(ref_total)
  assert set(out.loss_terms) == set(lxmert_jax.objectives.losses.LOSS_TERMS)
  for term in lxmert_jax.objectives.losses.LOSS_TERMS:
    ref = _hf_term(hf, inputs, labels, term)
    assert abs(float(out.loss_terms[term]) - ref) <= TOL * abs(ref), term
    assert abs(float(terms[term]) - ref) <= TOL * abs(ref), term


@pytest.mark.slow
def test_gradients_match_transformers():
  hf, model, params = torch_pair("LxmertForPreTraining", seed=3)
  inputs = random_inputs(3, seed=5)
  labels = random_pretraining_labels(inputs, seed=6)
  hf.zero_grad()
  hf(**torch_inputs(inputs), **torch_labels(labels)).loss.backward()
  ref = {k: p.grad.numpy() for k, p in hf.named_parameters()}

  def loss_fn(p):
    return model.apply({"params": p}, **inputs, labels=labels["masked_lm_labels"],
                       matched_label=labels["matched_label"], ans=labels["ans"],
                       obj_labels=lxmert_jax.objectives.losses.batch_visual_labels(labels)).loss

  with jax.default_matmul_precision("float32"):
    grads = convert.params_to_state_dict(jax.grad(loss_fn)(params))
  assert set(grads) == set(ref) - {convert.TIED_DECODER_KEY}
  for key, g in grads.items():
    scale = max(np.max(np.abs(ref[key])), 1e-6)
    assert np.max(np.abs(g - ref[key])) / scale <= 1e-4, key
  # Row 0 of each embedding table gets no gradient through the lookup.
  for table in ("position_embeddings", "token_type_embeddings"):
    np.testing.assert_array_equal(grads[f"lxmert.embeddings.{table}.weight"][0], 0.0)


@pytest.mark.parametrize("batch", [1, 3])
def test_question_answering_matches_transformers(batch):
  hf, model, params = torch_pair("LxmertForQuestionAnswering", seed=batch, num_qa_labels=5)
  inputs = random_inputs(batch, seed=2)
  labels = np.arange(batch) % 5
  with torch.no_grad():
    ref = hf(**torch_inputs(inputs), labels=torch.tensor(labels))
  with jax.default_matmul_precision("float32"):
    out = model.apply({"params": params}, **inputs, labels=labels)
  assert max_rel_error(out.question_answering_score, ref.question_answering_score) <= TOL
  assert abs(float(out.loss) - float(ref.loss)) <= TOL * float(ref.loss)


def test_backbone_matches_transformers():
  hf, model, params = torch_pair("LxmertModel", seed=4)
  inputs = random_inputs(3, seed=4)
  with torch.no_grad():
    ref = hf(**torch_inputs(inputs))
  with jax.default_matmul_precision("float32"):
    out = model.apply({"params": params}, **inputs)
  for field in ("language_output", "vision_output", "pooled_output"):
    assert max_rel_error(getattr(out, field), getattr(ref, field)) <= TOL, field


def test_layer_norm_eps_matches_transformers():
  """`layer_norm_eps` reaches every LayerNorm, the heads' included.

  transformers builds each LayerNorm with eps 1e-12 whatever its config says,
  so the reference here has its LayerNorms' eps set by hand. The embedding,
  box, head-transform and answer-head LayerNorms see variances near 1e-3,
  where eps 1e-5 moves each compared output by 16 to 15,000 times the
  tolerance; the loss covers the visual heads' LayerNorm.
  """
  eps = 1e-5
  hf, model, params = torch_pair("LxmertForPreTraining", seed=9, layer_norm_eps=eps)
  inputs = random_inputs(3, seed=9)
  labels = random_pretraining_labels(inputs, seed=10)
  fields = ("prediction_logits", "cross_relationship_score", "question_answering_score")

  def reference() -> dict[str, np.ndarray]:
    with torch.no_grad():
      out = hf(**torch_inputs(inputs), output_hidden_states=True)
      loss = hf(**torch_inputs(inputs), **torch_labels(labels)).loss
    return dict({f: out[f] for f in fields}, language_output=out.language_hidden_states[-1],
                vision_output=out.vision_hidden_states[-1], loss=loss)

  default_eps = reference()
  for module in hf.modules():
    if isinstance(module, torch.nn.LayerNorm):
      module.eps = eps
  ref = reference()
  with jax.default_matmul_precision("float32"):
    out = model.apply({"params": params}, **inputs, labels=labels["masked_lm_labels"],
                      matched_label=labels["matched_label"], ans=labels["ans"],
                      obj_labels=lxmert_jax.objectives.losses.batch_visual_labels(labels))
  for field, theirs in ref.items():
    assert max_rel_error(getattr(out, field), theirs) <= TOL, field
    # The hard-coded 1e-12 would fail this field.
    assert max_rel_error(default_eps[field], theirs) > 10 * TOL, field
