"""One process reading the data shards of several: the batches, the checkpointed position."""

import numpy as np
import pytest

from configs import pretrain
from lxmert_jax import data as data_lib
from lxmert_jax.tasks import data_shards
from lxmert_jax.tasks.pretraining_data import PretrainData

ENV = data_shards.READ_AS_PROCESSES_ENV


@pytest.mark.parametrize("value, count", [("", 1), ("1", 1), ("3", 3)])
def test_shard_count_is_the_process_count_unless_the_variable_says(monkeypatch, value, count):
  monkeypatch.setenv(ENV, value)
  assert data_shards.shard_count() == count
  assert data_shards.own_shards(count) == list(range(count))


@pytest.mark.parametrize("value", ["0", "-2", "two"])
def test_a_bad_shard_count_is_an_error_naming_the_variable(monkeypatch, value):
  monkeypatch.setenv(ENV, value)
  with pytest.raises(ValueError, match=ENV):
    data_shards.shard_count()


def _loader(demo_data, index, count, batch_size=4):
  return data_lib.make_pretrain_loader(demo_data, "mscoco_train", batch_size=batch_size,
                                       seed=3, max_seq_length=20, num_objects=10,
                                       shard_index=index, shard_count=count)


def _assert_same(a, b):
  assert sorted(a) == sorted(b)
  for key in a:
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_one_process_reads_the_shards_rows_in_process_order_and_resumes(demo_data):
  iterator = data_shards.iterate(lambda i, n: _loader(demo_data, i, n), 2)
  assert isinstance(iterator, data_shards.ConcatenatedShards)
  shards = [iter(_loader(demo_data, i, 2)) for i in range(2)]
  for _ in range(2):
    parts = [next(s) for s in shards]
    _assert_same(next(iterator), {k: np.concatenate([p[k] for p in parts]) for k in parts[0]})
  state = iterator.get_state()
  expected = next(iterator)
  resumed = data_shards.iterate(lambda i, n: _loader(demo_data, i, n), 2)
  resumed.set_state(state)
  _assert_same(next(resumed), expected)
  with pytest.raises(ValueError, match="not that of 3 shards"):
    data_shards.ConcatenatedShards([iter(_loader(demo_data, i, 3)) for i in range(3)]).set_state(
        state)


def test_pretraining_data_reads_as_two_processes_with_the_variable(demo_data, monkeypatch):
  config = pretrain.get_config("tiny")
  config.data.dir = demo_data
  monkeypatch.setenv(ENV, "2")
  data = PretrainData(config, "/nonexistent")
  assert (data.shard_count, data.per_shard_batch) == (2, config.batch_size // 2)
  first = next(data.train_iterator())
  assert first["input_ids"].shape[0] == config.batch_size
  # Rows 0..B/2-1 are process 0's shard, the rest process 1's.
  loaders = [data_lib.make_pretrain_loader(
      demo_data, config.data.train_split, batch_size=config.batch_size // 2, seed=config.seed,
      max_seq_length=config.data.max_seq_length, num_objects=config.data.num_objects,
      shard_index=i, shard_count=2, feature_dtype=np.float16) for i in range(2)]
  parts = [next(iter(loader)) for loader in loaders]
  _assert_same(first, {k: np.concatenate([p[k] for p in parts]) for k in parts[0]})


def test_the_variable_is_refused_in_a_multi_process_run(monkeypatch):
  monkeypatch.setenv(ENV, "2")
  monkeypatch.setattr(data_shards.jax, "process_count", lambda: 2)
  with pytest.raises(ValueError, match="one-process runs"):
    data_shards.shard_count()
