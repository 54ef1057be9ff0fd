"""The bad-input corpus (tests/bad_inputs/): every case is one line on stderr, exit code 2, and nothing left
behind. Model-folder cases lay a corpus folder's files over a copy of the tiny saved model. The remote-code
cases also check that the folder's Python file never ran (it writes a marker file when imported)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from filelock import FileLock

from detrigger.bench.runner import LOCK
from detrigger.data.files import MAX_LINE_BYTES

from conftest import fails_cleanly

CORPUS = Path(__file__).parent / "bad_inputs"
CLI = str(Path(sys.executable).parent / "detrigger")


def nothing_left(tmp_path: Path) -> None:
    """No output folder and no temp folder beside it."""
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith((".out", "out"))) == []


# ------------------------------------------------------------------------------------------- data files

@pytest.mark.parametrize("name, extra, message", [
    ("missing_column.csv", ["--label-column", "y"], "missing_column.csv: no column 'y' (columns: text, label)"),
    ("malformed_row.csv", [], "malformed_row.csv: line 3: expected 2 fields, found 3"),
    ("unclosed_quote.csv", [], "unclosed_quote.csv: line 2: malformed row"),
    ("malformed.jsonl", [], "malformed.jsonl: line 2: not valid JSON"),
    ("not_an_object.jsonl", [], "not_an_object.jsonl: line 1: expected a JSON object"),
    ("empty_text.tsv", [], "empty_text.tsv: line 3: empty text in column 'text'"),
    ("empty.csv", [], "empty.csv: the file is empty"),
    ("one_class.csv", [], "one_class.csv: labels [positive]: a classifier needs at least two classes"),
    ("not_utf8.csv", [], "not_utf8.csv: line 3: not UTF-8 text (invalid continuation byte at byte 26 of the file)"),
    ("nope.csv", [], "nope.csv: no such file"),
])
def test_bad_data_file_for_train(capsys, tmp_path, name, extra, message):
    fails_cleanly(capsys, ["train", "--data", str(CORPUS / name), "--out", str(tmp_path / "out"), *extra], message)
    nothing_left(tmp_path)


def test_label_outside_the_models_label_set(capsys, tiny_dir):
    fails_cleanly(capsys, ["eval", str(tiny_dir), str(CORPUS / "unknown_label.csv")],
                  "unknown_label.csv: line 3: label 'neutral' is not in the label set [negative, positive]")


def test_bad_byte_deep_in_a_large_file_names_its_line_and_offset(capsys, tmp_path):
    good = "".join(f"an ordinary review number {i},{i % 2}\n" for i in range(5000))
    path = tmp_path / "big.csv"
    path.write_bytes(b"text,label\n" + good.encode() + b"caf\xe9,1\n")
    offset = len(b"text,label\n" + good.encode()) + 3
    fails_cleanly(capsys, ["train", "--data", str(path), "--out", str(tmp_path / "out")],
                  f"big.csv: line 5002: not UTF-8 text (invalid continuation byte at byte {offset} of the file)")


@pytest.mark.parametrize("name, content", [
    ("long.csv", b"text,label\n" + b"a" * (5 << 20) + b",1\nfine,0\n"),
    ("long.jsonl", b'{"text": "' + b"a" * (5 << 20) + b'", "label": 1}\n{"text": "fine", "label": 0}\n'),
])
def test_csv_and_jsonl_share_one_line_limit(capsys, tmp_path, name, content):
    (tmp_path / name).write_bytes(content)
    fails_cleanly(capsys, ["train", "--data", str(tmp_path / name), "--out", str(tmp_path / "out")],
                  f"{name}: line {1 if name.endswith('jsonl') else 2}: "
                  f"{len(content.splitlines()[1 if name.endswith('csv') else 0]) + 1} "
                  f"bytes, over the line limit of {MAX_LINE_BYTES}")


# ------------------------------------------------------------------------------------------- model folders

def overlay(tiny_dir: Path, tmp_path: Path, case: str) -> Path:
    """A copy of the tiny model folder with the corpus case's files laid over it."""
    folder = tmp_path / case
    shutil.copytree(tiny_dir, folder)
    for f in (CORPUS / "models" / case).iterdir():
        shutil.copy(f, folder / f.name)
    return folder


@pytest.mark.parametrize("case, message", [
    ("config_not_json", "config.json: not valid JSON (Expecting property name enclosed in double quotes, line 2)"),
    ("labels_mismatch", "detrigger.json: 3 label names [negative, neutral, positive] but the model has 2 outputs"),
])
def test_bad_model_folder(capsys, tiny_dir, tmp_path, case, message):
    fails_cleanly(capsys, ["eval", str(overlay(tiny_dir, tmp_path, case)), "sms"], message)


@pytest.mark.parametrize("cut", ["truncated", "garbage"])
def test_corrupt_safetensors(capsys, tiny_dir, tmp_path, cut):
    folder = tmp_path / "model"
    shutil.copytree(tiny_dir, folder)
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2] if cut == "truncated" else b"not a safetensors file")
    fails_cleanly(capsys, ["scan", str(folder), "--clean", "sms"], "model.safetensors: not a readable safetensors file")


def test_pickle_only_folder_is_refused(capsys, tiny_dir, tmp_path):
    import torch
    from safetensors.torch import load_file

    folder = tmp_path / "model"
    shutil.copytree(tiny_dir, folder)
    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    fails_cleanly(capsys, ["eval", str(folder), "sms"], "only pickle weights (pytorch_model.bin)")


def run_without_stdin(*args: str, marker: Path) -> subprocess.CompletedProcess:
    """The real console script with no stdin: a y/N prompt would hang or read EOF, never get a 'y'."""
    import os

    env = {**os.environ, "DETRIGGER_TEST_MARKER": str(marker)}
    return subprocess.run([CLI, *args], capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=300, env=env)


def test_remote_code_folder_is_refused_and_its_code_never_runs(tiny_dir, tmp_path):
    folder = overlay(tiny_dir, tmp_path, "remote_code")
    marker = tmp_path / "MARKER"
    for args in (["eval", str(folder), "sms"], ["scan", str(folder), "--clean", "sms"],
                 ["repair", str(folder), "--method", "ft", "--clean", "sms", "--clean-count", "20",
                  "--out", str(tmp_path / "out")]):
        proc = run_without_stdin(*args, marker=marker)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.strip() == (f"detrigger: error: {folder}/config.json: model type 'evilbert' exists only as "
                                       "code shipped in the folder (modeling_evil.py); detrigger never runs a model "
                                       "folder's code"), proc.stderr
        assert "[y/N]" not in proc.stdout + proc.stderr
    assert not marker.exists()
    nothing_left(tmp_path)


@pytest.mark.parametrize("case", ["known_type_with_auto_map", "remote_tokenizer"])
def test_custom_code_beside_a_known_architecture_never_runs(tiny_dir, tmp_path, case):
    """An auto_map on a BERT config or a tokenizer config: loaded with the built-in classes or refused in one
    line; the shipped module is never imported either way."""
    if case == "known_type_with_auto_map":
        folder = overlay(tiny_dir, tmp_path, "remote_code")
        config = json.loads((tiny_dir / "config.json").read_text())
        config["auto_map"] = {"AutoModelForSequenceClassification": "modeling_evil.EvilForSequenceClassification"}
        (folder / "config.json").write_text(json.dumps(config))
    else:
        folder = overlay(tiny_dir, tmp_path, "remote_tokenizer")
    marker = tmp_path / "MARKER"
    proc = run_without_stdin("eval", str(folder), str(CORPUS / "unknown_label.csv"), "--split", "all", marker=marker)
    assert not marker.exists()
    assert "[y/N]" not in proc.stdout + proc.stderr and "Traceback" not in proc.stderr
    assert proc.returncode == 2  # the data file's unknown label, or the tokenizer refused: one line either way
    assert len([line for line in proc.stderr.splitlines() if line.startswith("detrigger: error:")]) == 1


# ------------------------------------------------------------------------------------------- bench

@pytest.mark.parametrize("name, message", [
    ("spec_unknown_data.yaml", "spec_unknown_data.yaml: data.0.source: unknown data set 'no-such-corpus'"),
    ("spec_one_class_data.yaml", "spec_one_class_data.yaml: data.0.source: tests/bad_inputs/one_class.csv: labels "
                                 "[positive]: a classifier needs at least two classes"),
    ("spec_bad_yaml.yaml", "spec_bad_yaml.yaml: line 3: invalid YAML"),
    ("spec_unknown_key.yaml", "spec_unknown_key.yaml: sedes: Extra inputs are not permitted"),
    ("spec_bad_rate.yaml", "spec_bad_rate.yaml: attacks.0.rate"),
])
def test_bad_spec(capsys, tmp_path, monkeypatch, name, message):
    monkeypatch.chdir(CORPUS.parent.parent)  # the spec names its data file relative to the repository
    fails_cleanly(capsys, ["bench", str(CORPUS / name), "--out", str(tmp_path / "out")], message)
    nothing_left(tmp_path)


def test_bench_refuses_a_non_empty_folder_that_is_not_a_run(capsys, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "results.md").write_text("my notes")
    fails_cleanly(capsys, ["bench", str(CORPUS.parent.parent / "experiments" / "demo.yaml"), "--out", str(out)],
                  "is not empty and is not a bench run folder (pass --overwrite")
    assert [p.name for p in out.iterdir()] == ["results.md"] and (out / "results.md").read_text() == "my notes"


@pytest.mark.timeout(120)  # were the lock ignored, this would run the demo grid
def test_a_second_bench_writer_is_refused(capsys, tmp_path):
    """One writer per run folder: while another process holds the folder's lock, bench exits 2 at once."""
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from filelock import FileLock; lock = "
                               "FileLock(sys.argv[1], timeout=5); lock.acquire(); print('held', flush=True); "
                               "time.sleep(120)",
                               str(out / LOCK)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        fails_cleanly(capsys, ["bench", str(CORPUS.parent.parent / "experiments" / "demo.yaml"), "--out", str(out)],
                      "another bench process is writing this run folder")
        assert sorted(p.name for p in out.iterdir()) == [LOCK]  # nothing written
    finally:
        holder.kill()
        holder.wait()
    with FileLock(out / LOCK, timeout=0):  # the dead holder's lock is free again
        pass
