"""Train step pieces, weight initialisation options, and whole training runs."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from lxmert_jax import train
from lxmert_jax.convert import checkpoints
from lxmert_jax.training import init_weights
from lxmert_jax.objectives import losses
from lxmert_jax.objectives import pretraining
from lxmert_jax.model.config import LxmertConfig
from lxmert_jax.model.task_models import LxmertForPreTraining

@pytest.fixture(scope="module", autouse=True)
def _fast_compile():
  """These tests are dominated by XLA compile time; optimisations do not matter."""
  previous = jax.config.read("jax_disable_most_optimizations")
  jax.config.update("jax_disable_most_optimizations", True)
  yield
  jax.config.update("jax_disable_most_optimizations", previous)


TINY = LxmertConfig(vocab_size=64, hidden_size=32, num_attention_heads=4, intermediate_size=64,
                    l_layers=2, x_layers=1, r_layers=1, visual_feat_dim=16, num_qa_labels=8,
                    num_object_labels=12, num_attr_labels=8, max_position_embeddings=16,
                    hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
# The step tests' cost is compile time, which grows with depth.
STEP_CFG = TINY.replace(l_layers=1)


def _batch(b=8, t=8, o=4, seed=0):
  rng = np.random.default_rng(seed)
  cfg = TINY
  ids = rng.integers(1, cfg.vocab_size, (b, t)).astype(np.int32)
  mlm = np.where(rng.uniform(size=(b, t)) < 0.3, ids, -100).astype(np.int32)
  mlm[:, 1] = ids[:, 1]
  return dict(
      input_ids=ids, attention_mask=np.ones((b, t), np.int32),
      token_type_ids=np.zeros((b, t), np.int32),
      visual_feats=rng.normal(size=(b, o, cfg.visual_feat_dim)).astype(np.float32),
      visual_pos=rng.uniform(size=(b, o, 4)).astype(np.float32),
      visual_attention_mask=np.ones((b, o), np.int32), masked_lm_labels=mlm,
      matched_label=rng.integers(0, 2, b).astype(np.int32),
      ans=rng.integers(0, cfg.num_qa_labels, b).astype(np.int32),
      obj_labels=rng.integers(0, cfg.num_object_labels, (b, o)).astype(np.int32),
      obj_conf=rng.uniform(size=(b, o)).astype(np.float32),
      attr_labels=rng.integers(0, cfg.num_attr_labels, (b, o)).astype(np.int32),
      attr_conf=rng.uniform(size=(b, o)).astype(np.float32),
      feat_targets=rng.normal(size=(b, o, cfg.visual_feat_dim)).astype(np.float32),
      feat_mask=(rng.uniform(size=(b, o)) < 0.3).astype(np.float32))


def _params(model, cfg=TINY, seed=0):
  from lxmert_jax.model.encoders import dummy_inputs  # pylint: disable=import-outside-toplevel
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  return nn.unbox(model.init(jax.random.key(seed), **dummy_inputs(cfg, 1, 4, 2))["params"])


# --- Objective metrics ---------------------------------------------------------


def test_switched_off_tasks_report_no_accuracy():
  cfg = STEP_CFG.replace(task_mask_lm=False, task_qa=False)
  model = LxmertForPreTraining(cfg)
  batch = _batch()
  inputs = {k: batch[k] for k in train.MODEL_INPUTS}
  outputs = model.apply({"params": _params(model, cfg)}, **inputs)
  weights = {task: jnp.float32(1.0) for task in pretraining.TASKS}
  _, metrics = pretraining.compute(outputs, batch, cfg, weights)
  assert {"matched_count", "obj_count", "attr_count"} <= set(metrics)
  assert not {"mlm_correct", "mlm_count", "qa_correct", "qa_count"} & set(metrics)


def test_other_image_control_moves_every_box_field_together():
  batch = _batch(b=4)
  other = train.with_other_images(batch)
  for key, value in batch.items():
    if key in train.IMAGE_KEYS:
      np.testing.assert_array_equal(other[key][1:], value[:-1], err_msg=key)
      np.testing.assert_array_equal(other[key][0], value[-1], err_msg=key)
    else:
      np.testing.assert_array_equal(other[key], value, err_msg=key)
  per_box = {k for k, v in batch.items() if v.ndim >= 2 and v.shape[1] == 4}
  assert per_box <= set(train.IMAGE_KEYS)


# --- Gradient accumulation ----------------------------------------------------


def test_gradient_accumulation_averages_microbatch_gradients():
  model = LxmertForPreTraining(STEP_CFG)
  params = _params(model, STEP_CFG)
  batch = jax.tree.map(jnp.asarray, _batch())
  weights = {k: jnp.float32(1.0) for k in pretraining.TASKS}
  key = jax.random.key(0)
  with jax.default_matmul_precision("float32"):
    grads, metrics = jax.jit(
        lambda p, b: train.grads_and_metrics(model, STEP_CFG, p, b, key, weights, 2))(params, batch)
    # Micro-batch i holds rows i, i+2, i+4, ... (rows stay on their device).
    single = jax.jit(lambda p, b: train.grads_and_metrics(model, STEP_CFG, p, b, key, weights, 1))
    parts = [single(params, jax.tree.map(lambda x, i=i: x[i::2], batch)) for i in range(2)]
  expected = jax.tree.map(lambda a, b: (a + b) / 2, parts[0][0], parts[1][0])
  diff = max(float(jnp.max(jnp.abs(a - b)))
             for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(expected)))
  assert diff < 1e-6
  assert float(metrics["loss"]) == pytest.approx(
      (float(parts[0][1]["loss"]) + float(parts[1][1]["loss"])) / 2, rel=1e-6)
  assert float(metrics["mlm_count"]) == float(parts[0][1]["mlm_count"] + parts[1][1]["mlm_count"])


def test_decoding_gathered_masked_rows_keeps_loss_and_gradients():
  model = LxmertForPreTraining(STEP_CFG)
  params = _params(model, STEP_CFG)
  batch = jax.tree.map(jnp.asarray, _batch())
  assert 0 < int(jnp.sum(batch["feat_mask"] > 0)) < batch["feat_mask"].size
  weights = {k: jnp.float32(1.0) for k in pretraining.TASKS}
  key = jax.random.key(0)
  # (MLM, feature) fractions: off; room for every masked row (gathered); too
  # little room for the MLM labels, then for the masked boxes (falls back).
  fractions = ((0.0, 0.0), (0.6, 0.6), (0.05, 0.6), (0.6, 0.01))

  def each(p):
    return [train.grads_and_metrics(model, STEP_CFG, p, batch, key, weights, 1,
                                    mlm_fraction=mlm, feat_fraction=feat)
            for mlm, feat in fractions]

  with jax.default_matmul_precision("float32"):
    (g0, m0), *others = jax.jit(each)(params)
  assert [float(m["decode_fallback"]) for _, m in others] == [0.0, 1.0, 1.0]
  for grads, metrics in others:
    assert float(metrics["loss"]) == pytest.approx(float(m0["loss"]), rel=1e-6)
    assert float(metrics["loss/feat"]) == pytest.approx(float(m0["loss/feat"]), rel=1e-6)
    assert float(metrics["mlm_correct"]) == float(m0["mlm_correct"])
    assert float(metrics["mlm_count"]) == float(m0["mlm_count"])
    diff = max(float(jnp.max(jnp.abs(a - b)))
               for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(g0)))
    assert diff < 1e-6


def test_step_gradients_equal_the_whole_models_loss_gradients():
  # The step differentiates the backbone and the heads separately (the heads
  # inside the decoding branches); together they must give the gradient of
  # the model's own loss, the tied word embeddings included.
  model = LxmertForPreTraining(STEP_CFG)
  params = _params(model, STEP_CFG)
  batch = jax.tree.map(jnp.asarray, _batch())
  weights = {k: jnp.float32(1.0) for k in pretraining.TASKS}

  def whole(p):
    out = model.apply({"params": p}, **{k: batch[k] for k in train.MODEL_INPUTS},
                      labels=batch["masked_lm_labels"], matched_label=batch["matched_label"],
                      obj_labels=losses.batch_visual_labels(batch), ans=batch["ans"])
    return out.loss

  with jax.default_matmul_precision("float32"):
    loss, expected = jax.jit(jax.value_and_grad(whole))(params)
    for fractions in ((0.0, 0.0), (0.6, 0.6)):
      grads, metrics = jax.jit(lambda p, f=fractions: train.grads_and_metrics(
          model, STEP_CFG, p, batch, jax.random.key(0), weights, 1, mlm_fraction=f[0],
          feat_fraction=f[1]))(params)
      assert float(metrics["decode_fallback"]) == 0.0
      assert float(metrics["loss"]) == pytest.approx(float(loss), rel=1e-6)
      assert jax.tree.structure(grads) == jax.tree.structure(expected)
      flat = jax.tree_util.tree_flatten_with_path(grads)[0]
      for (path, a), b in zip(flat, jax.tree.leaves(expected)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=str(path))


def test_bfloat16_compute_keeps_float32_parameters_and_gradients():
  cfg = STEP_CFG.replace(dtype="bfloat16", param_dtype="float32")
  model = LxmertForPreTraining(cfg)
  params = _params(model, cfg)
  assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}
  weights = {k: jnp.float32(1.0) for k in pretraining.TASKS}
  grads, metrics = jax.jit(lambda p: train.grads_and_metrics(
      model, cfg, p, jax.tree.map(jnp.asarray, _batch()), jax.random.key(0), weights, 1))(params)
  assert {x.dtype for x in jax.tree.leaves(grads)} == {jnp.dtype(jnp.float32)}
  assert metrics["loss"].dtype == jnp.float32 and np.isfinite(float(metrics["loss"]))


# --- Initialisation options ---------------------------------------------------


def test_scratch_init_returns_nothing_to_load():
  cfg = ml_collections.ConfigDict(dict(mode="scratch", path=""))
  assert init_weights.initial_params(cfg, LxmertForPreTraining(TINY), TINY,
                                     jax.random.key(0)) == (None, None)


def test_unknown_init_mode_and_missing_path_are_errors(tmp_path):
  model = LxmertForPreTraining(TINY)
  with pytest.raises(ValueError, match="init.mode 'imagenet'"):
    init_weights.initial_params(ml_collections.ConfigDict(dict(mode="imagenet", path="")),
                                model, TINY, jax.random.key(0))
  with pytest.raises(FileNotFoundError, match="init.path"):
    init_weights.initial_params(
        ml_collections.ConfigDict(dict(mode="bert", path=str(tmp_path / "nope"))),
        model, TINY, jax.random.key(0))


@pytest.mark.parametrize("with_heads", [False, True])
def test_bert_init_loads_the_language_encoder(tmp_path, with_heads):
  transformers = pytest.importorskip("transformers")
  torch = pytest.importorskip("torch")
  bert_config = transformers.BertConfig(
      vocab_size=64, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
      intermediate_size=64, max_position_embeddings=16, type_vocab_size=2)
  torch.manual_seed(0)
  cls = transformers.BertForPreTraining if with_heads else transformers.BertModel
  bert = cls(bert_config)
  bert.save_pretrained(tmp_path)
  state = {k: v.detach().numpy() for k, v in bert.state_dict().items()}
  prefix = "bert." if with_heads else ""

  model = LxmertForPreTraining(TINY)
  params, report = init_weights.initial_params(
      ml_collections.ConfigDict(dict(mode="bert", path=str(tmp_path))), model, TINY,
      jax.random.key(0))
  emb = params["lxmert"]["embeddings"]
  np.testing.assert_array_equal(emb["word_embeddings"]["embedding"],
                                state[f"{prefix}embeddings.word_embeddings.weight"])
  np.testing.assert_array_equal(emb["LayerNorm"]["scale"],
                                state[f"{prefix}embeddings.LayerNorm.weight"])
  layer1 = params["lxmert"]["encoder"]["layer_1"]
  np.testing.assert_array_equal(
      layer1["attention"]["self"]["query"]["kernel"],
      state[f"{prefix}encoder.layer.1.attention.self.query.weight"].T)
  np.testing.assert_array_equal(layer1["output"]["dense"]["bias"],
                                state[f"{prefix}encoder.layer.1.output.dense.bias"])
  np.testing.assert_array_equal(params["lxmert"]["pooler"]["dense"]["kernel"],
                                state[f"{prefix}pooler.dense.weight"].T)
  # TINY has 2 language layers: BERT's third is unused; X/R layers stay fresh.
  assert any("encoder.layer.2." in k for k in report.unused)
  assert "lxmert/encoder/x_layers_0/visual_attention/att/query/kernel" in report.initialised
  assert "lxmert/encoder/layer_1/attention/self/query/kernel" in report.loaded
  heads_loaded = "cls/predictions/transform/dense/kernel" in report.loaded
  assert heads_loaded == with_heads
  if with_heads:
    np.testing.assert_array_equal(params["cls"]["predictions"]["bias"],
                                  state["cls.predictions.bias"])
  fresh = _params(model, seed=0)
  np.testing.assert_allclose(params["answer_head"]["logit_fc_0"]["kernel"],
                             fresh["answer_head"]["logit_fc_0"]["kernel"], rtol=1e-6)
  assert "loaded" in str(report)


def test_bert_init_rejects_a_bert_of_another_width(tmp_path):
  transformers = pytest.importorskip("transformers")
  pytest.importorskip("torch")
  transformers.BertModel(transformers.BertConfig(
      vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
      intermediate_size=32, max_position_embeddings=16)).save_pretrained(tmp_path)
  with pytest.raises(ValueError, match="shape mismatches"):
    init_weights.initial_params(
        ml_collections.ConfigDict(dict(mode="bert", path=str(tmp_path))),
        LxmertForPreTraining(TINY), TINY, jax.random.key(0))


def test_lxmert_init_loads_matching_params_and_reports_the_rest(tmp_path):
  source_cfg = TINY.replace(num_qa_labels=5)
  source = LxmertForPreTraining(source_cfg)
  source_params = _params(source, source_cfg, seed=1)
  checkpoints.save_model(tmp_path / "ckpt", source, source_params)
  model = LxmertForPreTraining(TINY)
  params, report = init_weights.initial_params(
      ml_collections.ConfigDict(dict(mode="lxmert", path=str(tmp_path / "ckpt"))), model, TINY,
      jax.random.key(0))
  np.testing.assert_array_equal(
      params["lxmert"]["encoder"]["x_layers_0"]["lang_output"]["dense"]["kernel"],
      source_params["lxmert"]["encoder"]["x_layers_0"]["lang_output"]["dense"]["kernel"])
  assert report.initialised == ["answer_head/logit_fc_3/bias", "answer_head/logit_fc_3/kernel"]
  assert any("(64, 5)" in note for note in report.notes)


# --- Whole runs -----------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory):
  from lxmert_jax import data as data_lib  # pylint: disable=import-outside-toplevel
  return data_lib.build_demo_data(str(tmp_path_factory.mktemp("data")), num_images=24,
                                  feature_dim=32, tasks=("pretrain",))


@pytest.fixture(scope="module", autouse=True)
def _compilation_cache(tmp_path_factory):
  """Runs of the same config compile the same programs; compile them once."""
  names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
           "jax_persistent_cache_min_entry_size_bytes")
  previous = {n: getattr(jax.config, n) for n in names}
  for name, value in zip(names, (str(tmp_path_factory.mktemp("jax_cache")), 0, -1)):
    jax.config.update(name, value)
  yield
  for name, value in previous.items():
    jax.config.update(name, value)


def _tiny_config(data_dir, **overrides):
  from configs import pretrain  # pylint: disable=import-outside-toplevel
  config = pretrain.get_config("tiny")
  config.data.dir = data_dir
  # FSDP and tensor parallelism on the 8 test devices, so resuming is checked
  # with sharded parameters and optimiser state.
  config.mesh.update(dict(data=2, fsdp=2, tensor=2))
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split(".")
    for parent in parents:
      node = node[parent]
    node[leaf] = value
  return config


def _saved_state(workdir, step):
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  path = f"{workdir}/checkpoints/{step}/state"
  return ocp.PyTreeCheckpointer().restore(path)


@pytest.mark.filterwarnings("ignore:Sharding info not provided")
def test_resume_is_bit_identical_to_an_uninterrupted_run(demo_data, tmp_path):
  straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
  # With the reading thread on: it reads ahead of the checkpointed position.
  prefetch = {"data.device_prefetch": 2}
  train.train_and_evaluate(_tiny_config(demo_data, **prefetch), straight)
  first = train.train_and_evaluate(_tiny_config(demo_data, steps_per_run=3, **prefetch),
                                   resumed)
  assert "eval/loss" in first
  assert _saved_state(resumed, 3) is not None
  train.train_and_evaluate(_tiny_config(demo_data, **prefetch), resumed)
  a, b = _saved_state(straight, 6), _saved_state(resumed, 6)
  assert int(a["step"]) == int(b["step"]) == 6
  flat_a = jax.tree_util.tree_flatten_with_path(a)[0]
  flat_b = jax.tree_util.tree_flatten_with_path(b)[0]
  assert [p for p, _ in flat_a] == [p for p, _ in flat_b]
  for (path, x), (_, y) in zip(flat_a, flat_b):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=str(path))
  # Parameters did move, so the equality is not vacuous.
  start = _saved_state(resumed, 3)
  assert not np.array_equal(start["params"]["cls"]["predictions"]["bias"],
                            a["params"]["cls"]["predictions"]["bias"])


@pytest.mark.filterwarnings("ignore:Sharding info not provided")
def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(demo_data, tmp_path):
  workdir = str(tmp_path / "nan")
  with pytest.raises(train.NonFiniteLossError) as err:
    train.train_and_evaluate(_tiny_config(demo_data, debug_nan_at_step=4), workdir)
  message = str(err.value)
  assert "at step 4" in message and "Last good checkpoint: step 3" in message
  import os  # pylint: disable=import-outside-toplevel
  assert sorted(os.listdir(f"{workdir}/checkpoints")) == ["3"]
  state = _saved_state(workdir, 3)
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state["params"]))
