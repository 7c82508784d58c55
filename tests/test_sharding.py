"""Data-parallel, FSDP and tensor-parallel meshes give the single-device numbers.

Runs on the 8 fake CPU devices set up by conftest.py, with the real (tiny)
LxmertForPreTraining, dropout on, and float32 matmuls.
"""

import functools
import math
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import common
from mesh_utils import named_mesh
from configs import pretrain
from lxmert_jax.training import optimizers
from lxmert_jax.training import sharding as sharding_lib
from lxmert_jax.training import train_state as ts
from lxmert_jax.model.config import LxmertConfig
from lxmert_jax.model.task_models import LxmertForPreTraining
from lxmert_jax.objectives import masked_decoding
from lxmert_jax.tasks import pretraining as pretraining_task
from lxmert_jax.training import step as step_lib

TINY = LxmertConfig(vocab_size=64, hidden_size=32, num_attention_heads=4, intermediate_size=64,
                    l_layers=1, x_layers=1, r_layers=1, visual_feat_dim=16, num_qa_labels=8,
                    num_object_labels=12, num_attr_labels=8, max_position_embeddings=16)
RULES = sharding_lib.logical_rules(common.SHARDING_RULES)
MESHES = {"dp": dict(data=8, fsdp=1, tensor=1), "fsdp": dict(data=2, fsdp=4, tensor=1),
          "tp": dict(data=-1, fsdp=1, tensor=4)}


def _batch(b=16, t=16, o=10, seed=0):
  """A batch masked as the pipeline masks: about 15% of the words and of the boxes.

  Every row has two masked words and one or two masked boxes, so each shard's
  block fits the default decode fractions' slots and the gathered decoders run.
  """
  rng = np.random.default_rng(seed)
  cfg = TINY
  lengths = rng.integers(8, t + 1, (b, 1))
  mask = (np.arange(t)[None] < lengths).astype(np.int32)
  ids = np.where(mask == 1, rng.integers(1, cfg.vocab_size, (b, t)), 0).astype(np.int32)
  mlm = np.full((b, t), -100)
  feat_mask = np.zeros((b, o), np.float32)
  for row in range(b):
    words = rng.choice(np.arange(1, lengths[row, 0] - 1), 2, replace=False)
    mlm[row, words] = rng.integers(0, cfg.vocab_size, 2)
    feat_mask[row, rng.choice(o, 1 + row % 2, replace=False)] = 1.0
  ans = rng.integers(0, cfg.num_qa_labels, b)
  ans[::3] = -100
  return dict(
      input_ids=ids, attention_mask=mask, token_type_ids=np.zeros_like(ids),
      visual_feats=rng.normal(size=(b, o, cfg.visual_feat_dim)).astype(np.float32),
      visual_pos=rng.uniform(size=(b, o, 4)).astype(np.float32),
      visual_attention_mask=np.ones((b, o), np.int32),
      masked_lm_labels=mlm.astype(np.int32),
      matched_label=rng.integers(0, 2, b).astype(np.int32), ans=ans.astype(np.int32),
      obj_labels=rng.integers(0, cfg.num_object_labels, (b, o)).astype(np.int32),
      obj_conf=rng.uniform(size=(b, o)).astype(np.float32),
      attr_labels=rng.integers(0, cfg.num_attr_labels, (b, o)).astype(np.int32),
      attr_conf=rng.uniform(size=(b, o)).astype(np.float32),
      feat_targets=rng.normal(size=(b, o, cfg.visual_feat_dim)).astype(np.float32),
      feat_mask=feat_mask)


def _run_config():
  """The tiny pre-training config at the default decode fractions (0.25 of the rows)."""
  config = pretrain.get_config("tiny")
  config.objective.qa_start_epoch = 0
  config.optimizer.update(dict(lr=1e-3, warmup=0.1))
  return config


def _task(mesh, cfg=TINY):
  return pretraining_task.PretrainingTask(_run_config(), cfg, steps_per_epoch=10,
                                          num_groups=step_lib.batch_shards(mesh))


pytestmark = pytest.mark.usefixtures("fast_compile")


def _mesh(name):
  return named_mesh(name, MESHES)


@functools.lru_cache(maxsize=None)
def _setup(name, vocab_size=TINY.vocab_size):
  mesh = _mesh(name)
  cfg = TINY.replace(vocab_size=vocab_size)
  model = LxmertForPreTraining(cfg)
  tx, schedule = optimizers.make_optimizer(_run_config().optimizer, 10)
  _, shardings = ts.state_shardings(model, tx, mesh, RULES)
  state = ts.create_train_state(model, tx, shardings, seed=3)
  return mesh, model, tx, schedule, shardings, state


def _step_fn(task, tx):
  """Loss, gradients and the updated params of one step, as the trainer's step computes them."""
  def run(state, batch):
    # Step 5: past the warm-up's zero learning rate, so the update moves params.
    state = state.replace(step=jnp.int32(5))
    grads, metrics = step_lib.accumulated_grads(task, state.params, task.prepare_batch(batch),
                                                state.step_key(), state.step, 1)
    updates, _ = tx.update(grads, state.opt_state, state.params)
    return metrics, grads, optax.apply_updates(state.params, updates)
  return run


@functools.lru_cache(maxsize=None)
def _step_results(name):
  """Loss, gradients and the updated params of one step, from one jit on `name`."""
  mesh, _, tx, _, shardings, state = _setup(name)
  batch_sh = sharding_lib.batch_sharding(mesh)
  batch = sharding_lib.global_batch(_batch(), batch_sh)
  run = _step_fn(_task(mesh), tx)

  with jax.default_matmul_precision("float32"), jax.set_mesh(mesh), \
      nn.logical_axis_rules(RULES):
    out = jax.jit(run, in_shardings=(shardings, batch_sh),
                  out_shardings=(sharding_lib.replicated(mesh), shardings.params,
                                 shardings.params))(state, batch)
  return jax.device_get(out) + (jax.device_get(state.params),)


def _max_abs_diff(a, b):
  return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(MESHES))
def test_mesh_matches_single_device(name):
  ref_metrics, ref_grads, ref_params, ref_init = _step_results("single")
  metrics, grads, params, init = _step_results(name)
  # The sharded initialiser draws the same numbers as the single-device one.
  assert _max_abs_diff(init, ref_init) == 0.0
  loss_diff = abs(float(metrics["loss"]) - float(ref_metrics["loss"]))
  grad_diff = _max_abs_diff(grads, ref_grads)
  param_diff = _max_abs_diff(params, ref_params)
  print(f"\n[{name} {dict(_mesh(name).shape)}] |loss diff| {loss_diff:.2e}  max |grad diff| "
        f"{grad_diff:.2e}  max |param diff after the update| {param_diff:.2e}")
  assert loss_diff < 1e-5
  assert grad_diff < 1e-5
  assert param_diff < 1e-5
  # Both ran the gathered decoders (per shard on the mesh), not the full ones.
  assert float(metrics["decode_fallback"]) == float(ref_metrics["decode_fallback"]) == 0.0
  for key in metrics:
    if key.endswith(("_correct", "_count")):
      assert metrics[key] == ref_metrics[key], key


# A vocabulary size no other dimension of the tiny model has, to find the
# masked-LM decoder's arrays in the compiled program.
ODD_VOCAB = 97


@pytest.mark.slow
@pytest.mark.parametrize("name", ["dp", "fsdp"])
def test_masked_lm_decoder_runs_on_each_shards_own_rows(name):
  mesh, _, tx, _, shardings, state = _setup(name, vocab_size=ODD_VOCAB)
  cfg = TINY.replace(vocab_size=ODD_VOCAB)
  task = _task(mesh, cfg)
  batch_sh = sharding_lib.batch_sharding(mesh)
  host = _batch()
  host["input_ids"] %= ODD_VOCAB
  batch = sharding_lib.global_batch(host, batch_sh)
  with jax.set_mesh(mesh), nn.logical_axis_rules(RULES):
    compiled = jax.jit(_step_fn(task, tx), in_shardings=(shardings, batch_sh)).lower(
        state, batch).compile()
  hlo = compiled.as_text()
  shards = step_lib.batch_shards(mesh)
  rows = host["masked_lm_labels"].size
  slots = masked_decoding.capacity(task.config.mlm_decode_fraction, rows // shards)
  # Every [..., V] array of the partitioned program: the logits of the
  # gathered rows, their softmax and gradients. Parameters are [V] or [V, D].
  decoded = [tuple(int(d) for d in dims.split(",")[:-1])
             for dims in re.findall(r"f32\[((?:\d+,)+97)\]", hlo)]
  decoded = [d for d in decoded if d != (cfg.hidden_size,)]
  assert decoded, "no masked-LM logits found in the compiled step"
  sizes = {math.prod(d) for d in decoded}
  # Each device decodes its own rows only: its block's slots in the gathered
  # branch, its own positions in the fallback branch; never the whole
  # batch's gathered rows.
  assert slots in sizes, sorted(set(decoded))
  assert max(sizes) <= rows // shards, sorted(set(decoded))
  # The language stream is never gathered onto every device whole.
  whole = f"f32[{host['input_ids'].shape[0]},{host['input_ids'].shape[1]},{cfg.hidden_size}]"
  assert not [line for line in hlo.splitlines() if "all-gather" in line and whole in line]


def _param(tree, path):
  for key in path.split("/"):
    tree = tree[key]
  return tree


@pytest.mark.parametrize("name,path,spec,shard_shape", [
    ("fsdp", "lxmert/encoder/layer_0/attention/self/query/kernel", ("fsdp", "tensor"), (8, 32)),
    ("fsdp", "lxmert/embeddings/word_embeddings/embedding", ("tensor", "fsdp"), (64, 8)),
    ("fsdp", "lxmert/embeddings/LayerNorm/scale", ("fsdp",), (8,)),
    ("fsdp", "lxmert/encoder/visn_fc/visn_fc/kernel", (None, "fsdp"), (16, 8)),
    ("tp", "lxmert/encoder/layer_0/attention/self/query/kernel", ("fsdp", "tensor"), (32, 8)),
    ("tp", "lxmert/encoder/layer_0/attention/output/dense/kernel", ("tensor", "fsdp"), (8, 32)),
    ("tp", "lxmert/encoder/layer_0/intermediate/dense/kernel", ("fsdp", "tensor"), (32, 16)),
    ("tp", "lxmert/encoder/x_layers_0/lang_output/dense/kernel", ("tensor", "fsdp"), (16, 32)),
    ("tp", "lxmert/embeddings/word_embeddings/embedding", ("tensor", "fsdp"), (16, 32)),
    ("tp", "cls/predictions/bias", ("tensor",), (16,)),
    ("dp", "lxmert/encoder/layer_0/attention/self/query/kernel", ("fsdp", "tensor"), (32, 32)),
])
def test_parameters_are_split_as_the_rules_say(name, path, spec, shard_shape):
  state = _setup(name)[-1]
  leaf = _param(state.params, path)
  assert leaf.sharding.spec == jax.P(*spec)
  shapes = {tuple(s.data.shape) for s in leaf.addressable_shards}
  assert shapes == {shard_shape}


def test_optimizer_moments_are_sharded_like_params():
  state = _setup("fsdp")[-1]
  adam = state.opt_state[1][0]
  path = "lxmert/encoder/layer_0/attention/self/query/kernel"
  assert _param(adam.mu, path).sharding == _param(state.params, path).sharding
  assert _param(adam.nu, path).sharding == _param(state.params, path).sharding
  assert state.step.sharding.spec == jax.P()


def test_batch_is_split_over_data_and_fsdp():
  mesh = sharding_lib.make_mesh(MESHES["fsdp"])
  batch = sharding_lib.global_batch(_batch(), sharding_lib.batch_sharding(mesh))
  assert batch["input_ids"].sharding.spec == jax.P(("data", "fsdp"))
  assert {s.data.shape for s in batch["visual_feats"].addressable_shards} == {(2, 10, 16)}


def test_indivisible_dimension_is_replicated():
  mesh = sharding_lib.make_mesh(MESHES["tp"])
  cfg = TINY.replace(vocab_size=62)
  tx, _ = optimizers.make_optimizer(_run_config().optimizer, 10)
  _, shardings = ts.state_shardings(LxmertForPreTraining(cfg), tx, mesh, RULES)
  spec = _param(shardings.params, "lxmert/embeddings/word_embeddings/embedding").spec
  assert spec == jax.P(None, "fsdp")


@pytest.mark.parametrize("sizes,expected", [
    (dict(data=-1, fsdp=1, tensor=1), (8, 1, 1)), (dict(data=2, fsdp=-1, tensor=2), (2, 2, 2)),
    (dict(data=1, fsdp=1, tensor=-1), (1, 1, 8))])
def test_mesh_shape_auto_fill(sizes, expected):
  assert sharding_lib.mesh_shape(sizes, 8) == expected


@pytest.mark.parametrize("sizes", [dict(data=-1, fsdp=-1, tensor=1), dict(data=3, fsdp=1, tensor=1),
                                   dict(data=-1, fsdp=3, tensor=1), dict(data=0, fsdp=1, tensor=8)])
def test_bad_mesh_sizes_are_errors(sizes):
  with pytest.raises(ValueError, match="mesh sizes"):
    sharding_lib.mesh_shape(sizes, 8)


def test_unknown_mesh_axis_in_rules_is_an_error():
  with pytest.raises(ValueError, match="not in"):
    sharding_lib.logical_rules([("embed", "model")])
