"""Logical axis names, Flax's own mapping of them, and the dimensions a mesh cannot split.

Every parameter dimension has a distinct logical name, so Flax's partitioning
(`nn.logical_to_mesh_axes`, and the sharding constraints it applies while a
model initialises under a mesh and rules) works on the model as it is. Runs on
the 8 fake CPU devices set up by conftest.py.
"""

import collections
import functools

import flax.linen as nn
import jax
import numpy as np
import optax
import pytest

from configs import common
from mesh_utils import named_mesh
from lxmert_jax.model.config import LxmertConfig
from lxmert_jax.model.task_models import (LxmertForNLVR2, LxmertForPreTraining,
                                          LxmertForQuestionAnswering, init_inputs)
from lxmert_jax.training import sharding as sharding_lib
from lxmert_jax.training import train_state as ts

TINY = LxmertConfig(vocab_size=64, hidden_size=32, num_attention_heads=4, intermediate_size=64,
                    l_layers=1, x_layers=1, r_layers=1, visual_feat_dim=16, num_qa_labels=8,
                    num_object_labels=12, num_attr_labels=8, max_position_embeddings=16)
RULES = sharding_lib.logical_rules(common.SHARDING_RULES)
MESHES = {"dp": dict(data=8, fsdp=1, tensor=1), "fsdp": dict(data=2, fsdp=4, tensor=1),
          "tp": dict(data=-1, fsdp=1, tensor=4), "fsdp_tp": dict(data=2, fsdp=2, tensor=2)}
SQUARE_DENSES = ("lxmert/pooler/dense", "cls/predictions/transform/dense",
                 "obj_predict_head/transform/dense")


pytestmark = pytest.mark.usefixtures("fast_compile")


def _mesh(name):
  return named_mesh(name, MESHES)


@functools.lru_cache(maxsize=None)
def _boxed(cls=LxmertForPreTraining, vocab_size=TINY.vocab_size):
  return ts.boxed_param_shapes(cls(TINY.replace(vocab_size=vocab_size)))


def _boxes(boxed):
  """(path, LogicallyPartitioned) of every parameter."""
  flat, _ = jax.tree_util.tree_flatten_with_path(
      boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
  return [("/".join(k.key for k in path), box) for path, box in flat]


def _param(tree, path):
  for key in path.split("/"):
    tree = tree[key]
  return tree


@pytest.mark.parametrize("cls", [LxmertForPreTraining, LxmertForQuestionAnswering,
                                 LxmertForNLVR2])
def test_no_parameter_repeats_a_logical_name(cls):
  for path, box in _boxes(_boxed(cls)):
    names = [n for n in box.names if n is not None]
    assert len(names) == len(set(names)), (path, box.names)


def test_square_kernels_name_their_output_dimension():
  specs = nn.get_partition_spec(_boxed())
  for path in SQUARE_DENSES:
    assert _param(specs, path)["kernel"] == jax.P("embed", "embed_out"), path
    assert _param(specs, path)["bias"] == jax.P("embed_out"), path


@pytest.mark.parametrize("name", sorted(MESHES))
def test_shardings_are_flax_own_mapping_of_the_rules(name):
  mesh = _mesh(name)
  boxed = _boxed()
  shardings = sharding_lib.logical_to_shardings(boxed, mesh, RULES)
  for path, box in _boxes(boxed):
    expected = nn.logical_to_mesh_axes(box.names, RULES)
    assert _param(shardings, path).spec == expected, path
  # The square kernels split their input side, their biases the output side.
  for path in SQUARE_DENSES:
    assert _param(shardings, path)["kernel"].spec == jax.P("fsdp", None), path
    assert _param(shardings, path)["bias"].spec == jax.P("fsdp"), path


def test_initialising_under_the_mesh_and_rules_constrains_every_parameter():
  mesh = _mesh("fsdp_tp")
  model = LxmertForPreTraining(TINY)
  inputs = init_inputs(model)
  with jax.set_mesh(mesh), nn.logical_axis_rules(RULES):
    jaxpr = jax.make_jaxpr(lambda: model.init(jax.random.key(0), **inputs))()
  constrained = collections.Counter(
      (tuple(e.invars[0].aval.shape), e.params["sharding"].spec)
      for e in jaxpr.jaxpr.eqns if e.primitive.name == "sharding_constraint")
  expected = collections.Counter(
      (tuple(box.value.shape), nn.logical_to_mesh_axes(box.names, RULES))
      for _, box in _boxes(_boxed()))
  assert not expected - constrained
  assert constrained[((32, 32), jax.P("fsdp", None))] >= len(SQUARE_DENSES)


@functools.lru_cache(maxsize=None)
def _state(name, vocab_size, how):
  """A new train state on mesh `name`; `how` says where the rules come from."""
  cfg = TINY.replace(vocab_size=vocab_size)
  model = LxmertForPreTraining(cfg)
  tx = optax.adam(1e-3)
  mesh = _mesh(name)
  _, shardings = ts.state_shardings(model, tx, mesh, RULES)
  if how == "context":
    with jax.set_mesh(mesh), nn.logical_axis_rules(RULES):
      state = ts.create_train_state(model, tx, shardings, seed=3)
  else:
    state = ts.create_train_state(model, tx, shardings, seed=3,
                                  rules=RULES if how == "argument" else None)
  return state, shardings


@pytest.mark.parametrize("how", ["argument", "context"])
def test_train_state_initialised_under_the_rules_matches_single_device(how):
  # 62 rows cannot split over tensor=4: the vocab dimension is replicated.
  ref, _ = _state("single", 62, "none")
  state, shardings = _state("tp", 62, how)
  for path, box in _boxes(_boxed(vocab_size=62)):
    leaf = _param(state.params, path)
    assert leaf.sharding == _param(shardings.params, path), path
    np.testing.assert_array_equal(np.asarray(leaf), np.asarray(_param(ref.params, path)))
  word = _param(state.params, "lxmert/embeddings/word_embeddings/embedding")
  assert word.sharding.spec == jax.P(None, "fsdp")
  assert state.opt_state[0].mu["cls"]["predictions"]["bias"].sharding.spec == jax.P(None)


def test_unsplit_dimensions_lists_what_the_mesh_cannot_split():
  lines = sharding_lib.unsplit_dimensions(_boxed(vocab_size=62), _mesh("tp"), RULES)
  assert sorted(lines) == [
      "cls/predictions/bias dim 0 (vocab, 62) not divisible by tensor=4: replicated",
      "lxmert/embeddings/word_embeddings/embedding dim 0 (vocab, 62) not divisible by "
      "tensor=4: replicated",
  ]


def test_unsplit_dimensions_names_every_mesh_axis_of_a_rule():
  rules = sharding_lib.logical_rules([("vocab", ("fsdp", "tensor")), ("embed", None)])
  mesh = sharding_lib.make_mesh(dict(data=1, fsdp=2, tensor=4))
  lines = sharding_lib.unsplit_dimensions(_boxed(vocab_size=60), mesh, rules)
  assert "cls/predictions/bias dim 0 (vocab, 60) not divisible by fsdp=2 x tensor=4: " \
      "replicated" in lines
  shardings = sharding_lib.logical_to_shardings(_boxed(vocab_size=60), mesh, rules)
  assert shardings["cls"]["predictions"]["bias"].spec == jax.P(None)
  assert sharding_lib.logical_to_shardings(_boxed(), mesh, rules)["cls"]["predictions"][
      "bias"].spec == jax.P(("fsdp", "tensor"))


@pytest.mark.parametrize("name", sorted(MESHES))
def test_unsplit_dimensions_is_empty_when_every_rule_applies(name):
  assert sharding_lib.unsplit_dimensions(_boxed(), _mesh(name), RULES) == []


@pytest.mark.parametrize("cls", [LxmertForQuestionAnswering, LxmertForNLVR2])
def test_every_task_model_gets_a_sharded_train_state(cls):
  # The trainer builds any task's state the same way (NLVR2 takes image pairs).
  model = cls(TINY)
  mesh = _mesh("fsdp")
  _, shardings = ts.state_shardings(model, optax.adam(1e-3), mesh, RULES)
  state = ts.create_train_state(model, optax.adam(1e-3), shardings, seed=3, rules=RULES)
  kernel = state.params["answer_head"]["logit_fc_0"]["kernel"]
  assert kernel.sharding == shardings.params["answer_head"]["logit_fc_0"]["kernel"]
  assert int(state.step) == 0

