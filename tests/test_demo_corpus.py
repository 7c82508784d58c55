"""The demo corpus built by several processes into one directory at once, and added to."""

import json
import os
import subprocess
import sys

import ml_collections
import pytest

from lxmert_jax.data import store
from lxmert_jax.data.prepare.synthetic_corpus import DEMO_MARKER
from lxmert_jax.tasks import demo_corpus

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# configs/pretrain.py:tiny's corpus, as the `demo_data` fixture builds it.
SIZES = dict(num_images=24, seed=0, feature_dim=32)


def _builder(directory: str, task: str) -> subprocess.Popen:
  code = (f"from lxmert_jax.tasks import demo_corpus; "
          f"demo_corpus.build({directory!r}, {task!r}, **{SIZES!r})")
  return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stderr=subprocess.PIPE,
                          text=True, env={**os.environ, "PYTHONPATH": ROOT})


def _marker(directory: str) -> dict:
  with open(os.path.join(directory, DEMO_MARKER), encoding="utf-8") as f:
    return json.load(f)


def test_processes_building_into_one_directory_at_once_leave_one_complete_corpus(
    tmp_path, demo_data):
  directory = str(tmp_path / "shared")
  builders = [_builder(directory, "pretrain") for _ in range(2)]
  for builder in builders:
    _, stderr = builder.communicate(timeout=120)
    assert builder.returncode == 0, stderr[-3000:]
  assert _marker(directory)["tasks"] == ["pretrain"]
  assert not [n for n in os.listdir(directory) if n.startswith(".")]
  built, expected = (store.dataset_info(d)["num_examples"] for d in (directory, demo_data))
  assert built == expected

  # A task added later joins the same corpus; what was there stays untouched.
  config = os.path.join(directory, "corpus", "corpus_config.json")
  before = os.stat(config).st_mtime_ns
  demo_corpus.build(directory, "vqa", **SIZES)
  assert _marker(directory)["tasks"] == ["pretrain", "vqa"]
  assert os.stat(config).st_mtime_ns == before
  assert store.dataset_info(directory, "vqa")["num_examples"]
  assert store.dataset_info(directory)["num_examples"] == expected

  with pytest.raises(ValueError, match=f"{directory} holds demo data built with") as error:
    demo_corpus.build(directory, "gqa", **{**SIZES, "seed": 1})
  assert demo_corpus._PRIVATE_PREFIX not in str(error.value)  # pylint: disable=protected-access
  assert not [n for n in os.listdir(directory) if n.startswith(".")]


def test_the_config_chooses_the_corpus_scenes_and_captions(tmp_path):
  data_config = ml_collections.ConfigDict(dict(
      demo_images=8, demo_seed=0, demo_feature_dim=4, demo_max_objects=3,
      demo_captions="inventory"))
  directory = str(tmp_path / "demo")
  demo_corpus.ensure(directory, data_config, "pretrain", lambda: False)
  assert {k: _marker(directory)[k] for k in ("max_objects", "caption_style")} == {
      "max_objects": 3, "caption_style": "inventory"}
  with open(os.path.join(directory, "corpus", "corpus_config.json"), encoding="utf-8") as f:
    assert json.load(f)["caption_style"] == "inventory"
  with open(os.path.join(directory, "corpus", "lxmert", "mscoco_train.json"),
            encoding="utf-8") as f:
    assert all(c.startswith("there is a ") for d in json.load(f) for c in d["sentf"]["mscoco"])
