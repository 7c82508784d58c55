"""Checkpointer: round trip with the data position, retention, incomplete saves."""

import logging
import os

from etils import epath
import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from lxmert_jax.training import checkpointing
from lxmert_jax.training import sharding as sharding_lib
from lxmert_jax.training import train_state as ts


def _ckpt_config(**kw):
  cfg = ml_collections.ConfigDict(dict(every_steps=2, keep=2, keep_best=1,
                                       best_metric="eval/loss", best_mode="min",
                                       async_save=True))
  cfg.update(kw)
  return cfg


def _loader(seed=0):
  source = [{"x": np.int32(i)} for i in range(40)]
  sampler = grain.samplers.IndexSampler(len(source), shuffle=True, seed=seed, num_epochs=None,
                                        shard_options=grain.sharding.NoSharding())
  return grain.DataLoader(data_source=source, sampler=sampler,
                          operations=[grain.transforms.Batch(4, drop_remainder=True)])


def _state(mesh, value=1.0):
  sh = jax.NamedSharding(mesh, jax.P("fsdp"))
  params = {"w": jax.device_put(jnp.full((8, 2), value, jnp.float32), sh)}
  rep = sharding_lib.replicated(mesh)
  return ts.TrainState(step=jax.device_put(jnp.int32(3), rep), params=params,
                       opt_state={"mu": jax.device_put(jnp.zeros((8, 2)), sh)},
                       rng=jax.device_put(jax.random.key_data(jax.random.key(7)), rep))


@pytest.mark.parametrize("as_epath", [False, True], ids=["str", "epath"])
def test_round_trip_restores_state_shardings_and_data_position(tmp_path, as_epath):
  directory = epath.Path(tmp_path) if as_epath else str(tmp_path)
  mesh = sharding_lib.make_mesh(dict(data=2, fsdp=4, tensor=1))
  state = _state(mesh, 2.5)
  it = iter(_loader())
  for _ in range(3):
    next(it)
  ckpt = checkpointing.Checkpointer(directory, _ckpt_config())
  assert ckpt.directory == epath.Path(tmp_path)
  assert ckpt.save(3, state, it, force=True)
  ckpt.wait_until_finished()
  expected_next = [next(it)["x"].tolist() for _ in range(2)]
  ckpt.close()

  fresh = iter(_loader())
  ckpt = checkpointing.Checkpointer(directory, _ckpt_config())
  assert ckpt.latest_step() == 3
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                          state)
  restored = ckpt.restore(3, abstract, fresh)
  ckpt.close()
  assert [next(fresh)["x"].tolist() for _ in range(2)] == expected_next
  np.testing.assert_array_equal(np.asarray(restored.params["w"]), 2.5)
  assert restored.params["w"].sharding == state.params["w"].sharding
  assert int(restored.step) == 3
  np.testing.assert_array_equal(np.asarray(restored.rng), np.asarray(state.rng))


def test_relative_directory_is_made_absolute(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  mesh = sharding_lib.make_mesh(dict(data=-1, fsdp=1, tensor=1))
  ckpt = checkpointing.Checkpointer("run/checkpoints", _ckpt_config(async_save=False))
  assert ckpt.directory == epath.Path(tmp_path / "run" / "checkpoints")
  monkeypatch.chdir("/")
  assert ckpt.save(2, _state(mesh), iter(_loader()), force=True)
  ckpt.close()
  assert (tmp_path / "run" / "checkpoints" / "2").is_dir()


def test_keeps_latest_and_best(tmp_path):
  mesh = sharding_lib.make_mesh(dict(data=-1, fsdp=1, tensor=1))
  it = iter(_loader())
  ckpt = checkpointing.Checkpointer(str(tmp_path), _ckpt_config(async_save=False))
  losses = {2: 5.0, 4: 1.0, 6: 3.0, 8: 4.0, 10: 6.0}
  for step in range(1, 11):
    metrics = {"eval/loss": losses[step]} if step in losses else None
    ckpt.save(step, _state(mesh, step), it, metrics=metrics)
  ckpt.wait_until_finished()
  # Saved every 2 steps; kept: the 2 latest (8, 10) and the best (4).
  assert ckpt.all_steps() == [4, 8, 10]
  assert ckpt.best_step() == 4
  ckpt.close()


def test_saves_between_evaluations_log_no_missing_metrics_warning(tmp_path, caplog):
  mesh = sharding_lib.make_mesh(dict(data=-1, fsdp=1, tensor=1))
  ckpt = checkpointing.Checkpointer(str(tmp_path), _ckpt_config(async_save=False))
  with caplog.at_level(logging.WARNING):
    assert ckpt.save(2, _state(mesh), iter(_loader()))
  ckpt.close()
  assert not [r for r in caplog.records if "metrics" in r.getMessage()]


def test_interval_policy_and_force(tmp_path):
  mesh = sharding_lib.make_mesh(dict(data=-1, fsdp=1, tensor=1))
  it = iter(_loader())
  ckpt = checkpointing.Checkpointer(str(tmp_path), _ckpt_config(every_steps=5, keep=10))
  assert not ckpt.save(3, _state(mesh), it)
  assert ckpt.save(5, _state(mesh), it)
  assert ckpt.save(7, _state(mesh), it, force=True)
  ckpt.wait_until_finished()
  assert ckpt.all_steps() == [5, 7]
  ckpt.close()


def test_incomplete_checkpoint_is_ignored_and_cleaned(tmp_path):
  """A run killed mid-save leaves only a tmp dir; resuming uses the last complete one."""
  mesh = sharding_lib.make_mesh(dict(data=-1, fsdp=1, tensor=1))
  it = iter(_loader())
  ckpt = checkpointing.Checkpointer(str(tmp_path), _ckpt_config(async_save=False))
  ckpt.save(2, _state(mesh, 2.0), it, force=True)
  ckpt.close()
  # What orbax leaves behind when killed while writing step 4.
  partial = tmp_path / "4.orbax-checkpoint-tmp-1700000000"
  (partial / "state").mkdir(parents=True)
  (partial / "state" / "half_written").write_bytes(b"\0" * 10)

  ckpt = checkpointing.Checkpointer(str(tmp_path), _ckpt_config())
  assert ckpt.latest_step() == 2
  assert ckpt.all_steps() == [2]
  ckpt.save(4, _state(mesh, 4.0), it, force=True)
  ckpt.wait_until_finished()
  assert ckpt.all_steps() == [2, 4]
  assert not partial.exists()
  ckpt.close()


def test_unknown_best_metric_is_a_clear_error(tmp_path):
  mesh = sharding_lib.make_mesh(dict(data=-1, fsdp=1, tensor=1))
  it = iter(_loader())
  ckpt = checkpointing.Checkpointer(str(tmp_path), _ckpt_config(async_save=False, keep=1))
  ckpt.save(2, _state(mesh), it, metrics={"eval/los": 1.0}, force=True)
  with pytest.raises(KeyError, match="ckpt.best_metric 'eval/loss'"):
    ckpt.save(4, _state(mesh), it, metrics={"eval/los": 2.0}, force=True)
  ckpt.close()


def test_a_directory_orbax_cannot_read_back_is_refused(tmp_path):
  with pytest.raises(ValueError, match=r"contains '\[' or '\]'"):
    checkpointing.Checkpointer(tmp_path / "run[1]" / "checkpoints", _ckpt_config())
  assert not (tmp_path / "run[1]").exists()


def test_preemption_flag_catches_sigterm():
  import signal  # pylint: disable=import-outside-toplevel
  flag = checkpointing.PreemptionFlag()
  try:
    assert not flag.is_set()
    os.kill(os.getpid(), signal.SIGTERM)
    assert flag.is_set()
  finally:
    flag.restore_handler()
  assert signal.getsignal(signal.SIGTERM) is not flag._handle  # pylint: disable=protected-access
