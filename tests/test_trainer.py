"""Whole runs of the trainer on the tiny config: exact resume, the NaN guard, the start-up line."""

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import pretrain
from lxmert_jax.tasks import pretraining as pretraining_task
from lxmert_jax.training import trainer

pytestmark = pytest.mark.usefixtures("fast_compile", "compilation_cache")


def _tiny_config(data_dir, **overrides):
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
  return ocp.PyTreeCheckpointer().restore(f"{workdir}/checkpoints/{step}/state")


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Sharding info not provided")
def test_resume_is_bit_identical_to_an_uninterrupted_run(demo_data, tmp_path):
  straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
  # With the reading thread on: it reads ahead of the checkpointed position.
  prefetch = {"data.device_prefetch": 2}
  trainer.train_and_evaluate(_tiny_config(demo_data, **prefetch), straight)
  first = trainer.train_and_evaluate(_tiny_config(demo_data, steps_per_run=3, **prefetch),
                                     resumed)
  assert "eval/loss" in first
  assert _saved_state(resumed, 3) is not None
  trainer.train_and_evaluate(_tiny_config(demo_data, **prefetch), resumed)
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


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Sharding info not provided")
def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(demo_data, tmp_path,
                                                                   monkeypatch, capsys):
  # The task's loss turns NaN at step 4; the trainer's own step is unchanged.
  grads = pretraining_task.PretrainingTask.grads

  def nan_at_step_4(self, params, batch, key, step, counts):
    g, metrics = grads(self, params, batch, key, step, counts)
    return g, dict(metrics, loss=jnp.where(step == 4, jnp.nan, metrics["loss"]))

  monkeypatch.setattr(pretraining_task.PretrainingTask, "grads", nan_at_step_4)
  workdir = str(tmp_path / "nan")
  # tensor=4 cannot split the 30,522-word vocabulary: the start-up lines say so.
  config = _tiny_config(demo_data, **{"mesh.data": 1, "mesh.tensor": 4})
  with pytest.raises(trainer.NonFiniteLossError) as err:
    trainer.train_and_evaluate(config, workdir)
  message = str(err.value)
  assert "at step 4" in message and "Last good checkpoint: step 3" in message
  startup = capsys.readouterr().err
  assert "parameter dimension(s) the mesh cannot split are replicated" in startup
  assert ("lxmert/embeddings/word_embeddings/embedding dim 0 (vocab, 30522) not divisible "
          "by tensor=4: replicated") in startup
