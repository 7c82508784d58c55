"""MetricsWriter: metrics.jsonl, TensorBoard events and the loss plot, locally and in a bucket."""

import json
import os

from etils import epath
import pytest

from lxmert_jax.training import metrics_writer as mw

from test_paths import fake_gcs  # pylint: disable=unused-import  # A fixture.

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _write_run(workdir, steps, **kw):
  writer = mw.MetricsWriter(workdir, total_steps=max(steps), initial_step=min(steps) - 1,
                            enabled=True, progress_bar=False, **kw)
  for step in steps:
    writer.write_scalars(step, {"train/loss": 10.0 / step, "train/loss/mlm": 5.0 / step})
  writer.write_scalars(max(steps), {"eval/loss": 1.5})
  return writer


def _events(directory):
  return [p for p in epath.Path(directory).iterdir() if p.name.startswith("events.out.tfevents")]


@pytest.mark.parametrize("as_epath", [False, True], ids=["str", "epath"])
def test_local_run_writes_jsonl_events_and_plot(tmp_path, as_epath):
  workdir = tmp_path / "run"
  writer = _write_run(epath.Path(workdir) if as_epath else str(workdir), [1, 2, 3])
  # Rows are appended and flushed as they come.
  assert len(mw.read_jsonl(str(workdir / "metrics.jsonl"))) == 4
  assert writer.close() == epath.Path(workdir / "loss_curves.png")

  rows = mw.read_jsonl(epath.Path(workdir) / "metrics.jsonl")
  assert [r["step"] for r in rows] == [1, 2, 3, 3]
  assert rows[0] == {"step": 1, "train/loss": 10.0, "train/loss/mlm": 5.0}
  assert rows[-1] == {"step": 3, "eval/loss": 1.5}
  assert (workdir / "loss_curves.png").read_bytes()[:8] == PNG_MAGIC
  (events,) = _events(workdir / "tensorboard")
  assert b"train/loss/mlm" in events.read_bytes()
  assert not [n for n in os.listdir(workdir) if n.startswith(".")]


def test_local_resumed_run_appends_rows(tmp_path):
  _write_run(str(tmp_path), [1, 2]).close()
  _write_run(str(tmp_path), [3, 4]).close()
  rows = mw.read_jsonl(tmp_path / "metrics.jsonl")
  assert [r["step"] for r in rows] == [1, 2, 2, 3, 4, 4]


def test_disabled_writer_writes_nothing(tmp_path):
  writer = mw.MetricsWriter(str(tmp_path / "run"), 3, enabled=False, progress_bar=False)
  writer.write_scalars(1, {"train/loss": 1.0})
  writer.flush()
  assert writer.close() is None
  assert not (tmp_path / "run").exists()


def test_bucket_run_uploads_on_sync_and_close(fake_gcs):
  workdir = "gs://bucket/runs/base"
  writer = _write_run(workdir, [1, 2], sync_secs=3600)
  assert not epath.Path(f"{workdir}/metrics.jsonl").exists()  # Not synced yet.
  writer.flush()
  assert [r["step"] for r in mw.read_jsonl(f"{workdir}/metrics.jsonl")] == [1, 2, 2]
  assert len(_events(f"{workdir}/tensorboard")) == 1
  local_events = writer._events.local_dir  # pylint: disable=protected-access
  writer.write_scalars(3, {"train/loss": 0.5})
  assert writer.close() == epath.Path(f"{workdir}/loss_curves.png")

  assert not os.path.exists(local_events)
  assert [r["step"] for r in mw.read_jsonl(f"{workdir}/metrics.jsonl")] == [1, 2, 2, 3]
  assert epath.Path(f"{workdir}/loss_curves.png").read_bytes()[:8] == PNG_MAGIC
  (events,) = _events(f"{workdir}/tensorboard")
  assert b"train/loss/mlm" in events.read_bytes()
  assert all(key.startswith("/bucket/runs/base/") for key in fake_gcs)


def test_bucket_resumed_run_keeps_earlier_rows_and_syncs_per_row_when_asked(fake_gcs):
  del fake_gcs
  workdir = epath.Path("gs://bucket/run")
  _write_run(workdir, [1, 2]).close()
  writer = _write_run(workdir, [3], sync_secs=0)
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows] == [1, 2, 2, 3, 3]
  writer.close()


def test_plot_loss_curves_without_loss_rows_writes_nothing(tmp_path):
  (tmp_path / "m.jsonl").write_text(json.dumps({"step": 1, "train/lr": 0.1}) + "\n")
  assert mw.plot_loss_curves(str(tmp_path / "m.jsonl"), str(tmp_path / "p.png")) is None
  assert mw.plot_loss_curves(tmp_path / "missing.jsonl", tmp_path / "p.png") is None
  assert not (tmp_path / "p.png").exists()
