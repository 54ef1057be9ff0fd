"""The real embedded MiniLM on a few hundred real MR sentences, end to end through the CLI."""

from __future__ import annotations

import json

import pytest
from test_cli import run

pytestmark = pytest.mark.slow


def test_train_then_eval_the_real_model(tmp_path):
    out = tmp_path / "mr-small"
    proc = run("train", "--data", "mr", "--out", str(out), "--max-train", "400", "--val", "200", "--test", "300",
               "--epochs", "3", "--batch-size", "16", "--lr", "1e-4", "--max-length", "64", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert "CACC" in proc.stdout
    names = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "detrigger.json", "metrics.json", "run.json",
            "train.log"} <= names
    assert not any(p.suffix in (".bin", ".pt") for p in out.iterdir())
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["data"]["sizes"] == {"train": 400, "val": 200, "test": 300}
    assert metrics["cacc"] > 0.68  # the majority class is 0.58; 400 sentences take MiniLM to about 0.76
    assert "epoch 3/3" in (out / "train.log").read_text()

    # eval re-creates the same test split from what the model recorded, so CACC matches exactly
    proc = run("eval", str(out), "mr", "--trigger-word", "cf", "--json", "--reference", str(out))
    assert proc.returncode == 0, proc.stderr
    m = json.loads(proc.stdout)
    assert m["n_test"] == 300 and m["cacc"] == pytest.approx(metrics["cacc"])
    assert m["asr_floor"] == pytest.approx(m["asr"])  # the same model as its own reference
    assert 0 < m["n_poisoned"] < 300  # only the non-target (negative) test texts
