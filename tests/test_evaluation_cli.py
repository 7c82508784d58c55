"""`python -m lxmert_jax.evaluation`: tables, the metrics JSON, one-line errors.

Small hand-written files whose figures are worked out in the comments (the
metric rules themselves are tested in test_evaluation_{vqa,gqa,nlvr2}.py).
"""

import json
import os
import subprocess
import sys

import pytest

from lxmert_jax.evaluation import cli

PROG = "python -m lxmert_jax.evaluation"


def _write(path, content):
  path.write_text(content if isinstance(content, str) else json.dumps(content))
  return str(path)


def _answers(*texts):
  return [{"answer": t, "answer_confidence": "yes", "answer_id": i + 1}
          for i, t in enumerate(texts)]


@pytest.fixture
def vqa_files(tmp_path):
  annotations = {"annotations": [
      {"question_id": 1, "image_id": 9, "question_type": "is the", "answer_type": "yes/no",
       "answers": _answers(*["yes"] * 10)},
      {"question_id": 2, "image_id": 9, "question_type": "how many", "answer_type": "number",
       "answers": _answers(*["3"] * 2 + ["4"] * 8)},
      {"question_id": 3, "image_id": 9, "question_type": "what color is the",
       "answer_type": "other", "answers": _answers(*["red"] + ["blue"] * 9)},
  ]}
  questions = {"questions": [{"question_id": i, "image_id": 9, "question": f"q{i}?"}
                             for i in (1, 2, 3)]}
  return {"annotations": _write(tmp_path / "v2_mscoco_val2014_annotations.json", annotations),
          "questions": _write(tmp_path / "v2_OpenEnded_mscoco_val2014_questions.json",
                              questions),
          # Question accuracies 1, 0.6 ("three" -> "3", two of ten), 0.3: mean 63.33.
          "results": _write(tmp_path / "results.json",
                            [{"question_id": 1, "answer": "yes"},
                             {"question_id": 2, "answer": "three"},
                             {"question_id": 3, "answer": "red"}])}


def test_vqa_table_and_json(vqa_files, tmp_path, capsys):
  out = tmp_path / "metrics" / "vqa.json"
  status = cli.main(["vqa", "--results", vqa_files["results"], "--annotations",
                     vqa_files["annotations"], "--questions", vqa_files["questions"],
                     "--out", str(out)])
  assert status == 0
  lines = capsys.readouterr().out.splitlines()
  assert lines[0] == f"vqa {vqa_files['results']}: 3 questions"
  assert [line.split() for line in lines[1:5]] == [["overall", "63.33"], ["yes/no", "100.00"],
                                                   ["number", "60.00"], ["other", "30.00"]]
  assert lines[5] == f"wrote {out}"
  report = json.loads(out.read_text())
  assert report["task"] == "vqa"
  assert report["inputs"]["results"] == vqa_files["results"]
  assert report["metrics"] == {
      "overall": 63.33, "per_answer_type": {"yes/no": 100.0, "number": 60.0, "other": 30.0},
      "per_question_type": {"is the": 100.0, "how many": 60.0, "what color is the": 30.0},
      "per_question": {"1": 100.0, "2": 60.0, "3": 30.0}, "num_questions": 3}


def test_gqa_with_choices_and_consistency(tmp_path, capsys):
  steps = [{"operation": "select", "argument": "cat (1)"},
           {"operation": "query", "argument": "name"}]

  def question(answer, structural, entailed=()):
    return {"answer": answer, "isBalanced": True, "question": "What is it?",
            "types": {"structural": structural, "semantic": "attr", "detailed": "x"},
            "semantic": steps, "groups": {"global": None, "local": "l"},
            "entailed": list(entailed)}

  questions = _write(tmp_path / "val_all_questions.json",
                     {"a": question("red", "query", entailed=["b"]),
                      "b": question("yes", "verify"), "c": question("no", "logical")})
  choices = _write(tmp_path / "val_choices.json",
                   {q: {"valid": ["red", "yes", "no"], "plausible": ["red", "yes"]}
                    for q in "abc"})
  # a right, b right, c wrong ("yes"): accuracy 2/3; open a 1/1; binary 1/2;
  # all valid; c's "yes" plausible too; a entails b, right: consistency 100.
  predictions = _write(tmp_path / "predictions.json",
                       [{"questionId": q, "prediction": p}
                        for q, p in (("a", "red"), ("b", "yes"), ("c", "yes"))])
  out = tmp_path / "gqa.json"
  assert cli.main(["gqa", "--predictions", predictions, "--questions", questions,
                   "--choices", choices, "--consistency", "--out", str(out)]) == 0
  table = [line.split() for line in capsys.readouterr().out.splitlines()[1:7]]
  assert table == [["accuracy", "66.67"], ["binary", "50.00"], ["open", "100.00"],
                   ["validity", "100.00"], ["plausibility", "100.00"],
                   ["consistency", "100.00"]]
  metrics = json.loads(out.read_text())["metrics"]
  assert metrics["accuracy"] == pytest.approx(200 / 3)
  assert metrics["distribution"] is None
  assert metrics["per_structural_type"]["logical"] == {"accuracy": 0.0, "questions": 1}
  assert metrics["per_steps"] == {"1": {"accuracy": pytest.approx(200 / 3), "questions": 3}}

  capsys.readouterr()
  assert cli.main(["gqa", "--predictions", predictions, "--questions", questions]) == 0
  names = [line.split()[0] for line in capsys.readouterr().out.splitlines()[1:]]
  assert names == ["accuracy", "binary", "open"]       # no choices, no consistency


def test_nlvr2(tmp_path, capsys):
  examples = _write(tmp_path / "dev.json", "".join(
      json.dumps({"identifier": i, "label": label, "sentence": "s"}) + "\n"
      for i, label in (("dev-1-0-0", "True"), ("dev-1-1-0", "False"), ("dev-2-0-0", "True"))))
  predictions = _write(tmp_path / "predictions.csv",
                       "dev-1-0-0,True\ndev-1-1-0,True\ndev-2-0-0,True\n")
  out = tmp_path / "nlvr2.json"
  assert cli.main(["nlvr2", "--predictions", predictions, "--examples", examples,
                   "--out", str(out)]) == 0
  lines = capsys.readouterr().out.splitlines()
  assert lines[0] == f"nlvr2 {predictions}: 3 examples, 2 sentences"
  assert [line.split() for line in lines[1:3]] == [["accuracy", "0.6667"],
                                                   ["consistency", "0.5000"]]
  assert json.loads(out.read_text())["metrics"] == {
      "accuracy": pytest.approx(2 / 3), "consistency": 0.5, "num_examples": 3,
      "num_sentences": 2}


def _error_line(capsys):
  captured = capsys.readouterr()
  assert captured.out == ""
  lines = captured.err.splitlines()
  assert len(lines) == 1, captured.err
  return lines[0]


def test_bad_input_is_one_line_and_status_1(vqa_files, tmp_path, capsys):
  short = _write(tmp_path / "short.json", [{"question_id": 1, "answer": "yes"}])
  out = tmp_path / "metrics.json"
  assert cli.main(["vqa", "--results", short, "--annotations", vqa_files["annotations"],
                   "--out", str(out)]) == 1
  line = _error_line(capsys)
  assert line.startswith(f"{PROG} vqa: error: {short} [2]: no prediction for question 2, 3")
  assert not out.exists()

  broken = _write(tmp_path / "broken.json", '[{"question_id": 1, "answer": "yes"')
  assert cli.main(["vqa", "--results", broken, "--annotations", vqa_files["annotations"]]) == 1
  assert _error_line(capsys).startswith(f"{PROG} vqa: error: {broken}: not valid JSON")

  no_key = _write(tmp_path / "no_key.json", [{"question_id": 1}])
  assert cli.main(["vqa", "--results", no_key, "--annotations", vqa_files["annotations"]]) == 1
  assert _error_line(capsys) == f"{PROG} vqa: error: {no_key} [1]: missing field 'answer'"

  missing = str(tmp_path / "nowhere.json")
  gqa_predictions = _write(tmp_path / "gqa.json", [{"questionId": "1", "prediction": "yes"}])
  assert cli.main(["gqa", "--predictions", gqa_predictions, "--questions", missing]) == 1
  assert missing in _error_line(capsys)

  bad_csv = _write(tmp_path / "bad.csv", "dev-1-0-0\n")
  examples = _write(tmp_path / "dev.json", '{"identifier": "dev-1-0-0", "label": "True"}\n')
  assert cli.main(["nlvr2", "--predictions", bad_csv, "--examples", examples]) == 1
  assert _error_line(capsys) == (f"{PROG} nlvr2: error: {bad_csv}: line 1: expected "
                                 "'identifier,prediction', got 'dev-1-0-0'")


def test_module_entry_point(vqa_files, tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  out = tmp_path / "metrics.json"
  ok = subprocess.run([sys.executable, "-m", "lxmert_jax.evaluation", "vqa", "--results",
                       vqa_files["results"], "--annotations", vqa_files["annotations"],
                       "--out", str(out)], capture_output=True, text=True, env=env,
                      check=False)
  assert ok.returncode == 0, ok.stderr
  assert "63.33" in ok.stdout
  assert json.loads(out.read_text())["metrics"]["overall"] == 63.33

  bad = subprocess.run([sys.executable, "-m", "lxmert_jax.evaluation", "vqa", "--results",
                        str(tmp_path / "absent.json"), "--annotations",
                        vqa_files["annotations"]], capture_output=True, text=True, env=env,
                       check=False)
  assert bad.returncode == 1
  assert bad.stdout == ""
  assert bad.stderr.startswith(f"{PROG} vqa: error: ")
  assert "absent.json" in bad.stderr
  assert "Traceback" not in bad.stderr and len(bad.stderr.splitlines()) == 1
