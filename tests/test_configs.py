"""Config files: variants, argument parsing, and that every field is usable."""

import ml_collections
import pytest

from configs import common, pretrain
from lxmert_jax.objectives import pretraining
from lxmert_jax.training import sharding as sharding_lib
from lxmert_jax.tasks import pretraining as pretraining_task


@pytest.mark.parametrize("arg", [None, "base", "demo", "tiny", "variant=tiny"])
def test_every_variant_builds_a_model_config(arg):
  config = pretrain.get_config(arg)
  data_fields = dict(vocab_size=100, num_qa_labels=10, num_object_labels=20,
                     num_attr_labels=5, visual_feat_dim=16)
  model_config = pretraining_task.model_config_from(config, data_fields)
  assert model_config.vocab_size == 100
  sharding_lib.logical_rules(config.sharding_rules)
  assert config.optimizer.name in ("bert_adam", "adamw")


def test_base_is_the_papers_setting():
  config = pretrain.get_config()
  model = config.model
  assert (model.l_layers, model.r_layers, model.x_layers) == (9, 5, 5)
  assert (model.hidden_size, model.num_attention_heads, model.intermediate_size) == (768, 12, 3072)
  assert config.batch_size == 256 and config.num_epochs == 20
  assert config.optimizer.name == "bert_adam" and config.optimizer.lr == 1e-4
  assert config.optimizer.warmup == 0.05 and config.optimizer.clip_norm == 1.0
  assert config.optimizer.weight_decay == 0.01 and config.optimizer.eps == 1e-6
  assert config.objective.qa_start_epoch == 10 and config.objective.weights.qa == 2.0
  assert config.init.mode == "scratch"
  assert config.data.max_seq_length == 20 and config.data.num_objects == 36


def test_qa_schedule_follows_the_epoch():
  config = pretrain.get_config()
  weights = lambda step: float(pretraining.loss_weights(config.objective, step, 100)["qa"])
  assert weights(0) == 0.0 and weights(999) == 0.0
  assert weights(1000) == 2.0 and weights(1999) == 2.0


def test_task_switches_reach_the_model():
  config = pretrain.get_config("tiny")
  config.objective.tasks.qa = False
  config.objective.tasks.obj = False
  config.objective.tasks.attr = False
  config.objective.tasks.feat = False
  model_config = pretraining_task.model_config_from(config, {})
  assert not model_config.task_qa and not model_config.task_obj_predict
  assert model_config.task_mask_lm and model_config.task_matched


def test_unknown_task_is_an_error():
  config = pretrain.get_config("tiny")
  config.objective.tasks.captioning = True
  with pytest.raises(ValueError, match="unknown tasks"):
    pretraining_task.model_config_from(config, {})


def test_unknown_model_field_is_an_error():
  config = pretrain.get_config("tiny")
  config.model.num_layers = 3
  with pytest.raises(ValueError, match="config.model"):
    pretraining_task.model_config_from(config, {})


def test_unknown_variant_is_an_error():
  with pytest.raises(ValueError, match="unknown variant 'huge'"):
    pretrain.get_config("huge")


def test_locked_config_rejects_new_fields():
  config = pretrain.get_config("tiny")
  config.lock()
  with pytest.raises(AttributeError, match="lr"):
    config.optimizer.lrr = 1.0


def test_parse_arg_types_and_errors():
  parsed = common.parse_arg("small,runlocal,steps=5,lr=0.5", variant="base", runlocal=False,
                            steps=1, lr=1.0)
  assert parsed == ml_collections.ConfigDict(dict(variant="small", runlocal=True, steps=5,
                                                  lr=0.5))
  with pytest.raises(ValueError, match="not one of"):
    common.parse_arg("color=red", variant="base")
  with pytest.raises(ValueError, match="expected int"):
    common.parse_arg("steps=x", variant="base", steps=1)
  assert common.parse_arg(None, variant="base").variant == "base"


def test_unknown_config_task_is_an_error(tmp_path):
  from lxmert_jax import tasks  # pylint: disable=import-outside-toplevel
  config = pretrain.get_config("tiny")
  config.task = "captioning"
  with pytest.raises(ValueError, match="config.task 'captioning'"):
    tasks.build(config, str(tmp_path), sharding_lib.make_mesh(config.mesh))


def test_fine_tuning_configs_follow_the_original_recipe():
  """run/{vqa,gqa,nlvr2}_finetune.bash: batch 32, 4 epochs, lr 5e-5/1e-5/5e-5, 10% warm-up."""
  from configs import gqa, nlvr2, vqa  # pylint: disable=import-outside-toplevel
  expected = {vqa: ("vqa", 5e-5, "train+nominival", "minival"),
              gqa: ("gqa", 1e-5, "train+valid", "testdev"),
              nlvr2: ("nlvr2", 5e-5, "train", "valid")}
  for module, (task, lr, train, dev) in expected.items():
    config = module.get_config()
    assert (config.task, config.optimizer.lr, config.data.train_split,
            config.data.eval_split) == (task, lr, train, dev)
    assert (config.batch_size, config.num_epochs, config.seed) == (32, 4, 9595)
    assert (config.optimizer.name, config.optimizer.warmup, config.optimizer.clip_norm) == (
        "bert_adam", 0.1, 5.0)
    assert config.model.hidden_dropout_prob == 0.1
    assert config.eval_every_epochs == 1 and config.ckpt.best_mode == "max"
    assert config.init.encoder_only == (task == "nlvr2")
    for variant in ("demo", "tiny"):
      assert module.get_config(variant).data.build_demo
