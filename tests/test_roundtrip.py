"""A repaired folder behaves the same under plain `transformers` as under detrigger, for every defence; a
protection that plain `transformers` cannot apply (MBTSAD's input purifier) is left out by default and
said so, or shipped on request and marked as not deployable (issue 16)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

from detrigger import TrainConfig, Victim, load_victim
from detrigger.defences import DEFENCES, repair
from detrigger.defences.base import clean_splits
from detrigger.models.predict import accuracy, predict, predict_logits
from detrigger.models.victim import PURIFIER_FILE
from detrigger.scan import ScanConfig

from conftest import tiny_victim

QUICK = TrainConfig(epochs=1, lr=1e-3, batch_size=16)
# Plain transformers and detrigger compute the same logits (bit for bit on CPU); the models' logits vary from
# text to text by far more than this (checked), so a text read differently fails the comparison.
TOL = 1e-6


def tiny_config(method: str) -> dict:
    """One epoch and one grid point for whichever of these options the defence has."""
    fields = DEFENCES[method].config.model_fields
    quick = {"train": QUICK, "teacher_train": QUICK, "rho_grid": (0.5,), "ratios": (0.2,), "top_n": 5, "max_rounds": 1,
             "scan": ScanConfig(samples=10, candidates=3, rounds=1, screen_samples=0, verify=3, report=5,
                                lexicon_words=0)}
    return {k: v for k, v in quick.items() if k in fields}


def text_dependent(seed: int, mr) -> Victim:
    """A tiny random BERT whose output depends on the text (at the default initialisation it barely does:
    logits vary by 4e-5 across MR texts): weight matrices x10, head bias centred on other MR texts."""
    victim = tiny_victim(seed=seed)
    with torch.no_grad():
        for weight in victim.model.parameters():
            if weight.dim() == 2:
                weight.mul_(10)
        victim.model.classifier.bias -= torch.from_numpy(predict_logits(victim, mr.texts[1000:1200]).mean(0))
    return victim


@pytest.fixture(scope="module")
def reference_dir(tmp_path_factory, mr) -> Path:
    return text_dependent(7, mr).save(tmp_path_factory.mktemp("ref") / "encoder")


@pytest.fixture(scope="module")
def suspect(mr) -> Victim:
    """The reference 'fine-tuned': every tensor differs from the reference's (seeded noise of half each tensor's
    spread), and stays correlated with it, as a model fine-tuned from its base does (`base_mismatch`)."""
    victim = text_dependent(7, mr)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for weight in victim.model.parameters():
            weight.add_(torch.randn(weight.shape, generator=generator) * 0.5 * weight.std().clamp_min(1e-3))
    return victim


@pytest.fixture(scope="module")
def clean(mr):
    return mr.select(range(120))


@pytest.fixture(scope="module")
def texts(mr) -> list[str]:
    """Real MR texts the repair never saw, and two longer than the model's 48 tokens (truncation)."""
    return list(mr.texts[-40:]) + [" ".join(mr.texts[-60:-50]), " ".join(mr.texts[-70:-60])]


def plain_logits(folder: Path, texts: list[str]) -> np.ndarray:
    """What a user gets with AutoTokenizer + AutoModelForSequenceClassification alone."""
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    with torch.no_grad():
        return model(**tokenizer(texts, padding=True, truncation=True, return_tensors="pt")).logits.numpy()


def pipeline_scores(folder: Path, texts: list[str]) -> np.ndarray:
    """Class probabilities from `pipeline("text-classification")`, in label-id order."""
    classify = pipeline("text-classification", model=str(folder), top_k=None)
    label2id = classify.model.config.label2id
    out = np.zeros((len(texts), len(label2id)))
    for row, scores in enumerate(classify(texts, truncation=True)):
        for s in scores:
            out[row, label2id[s["label"]]] = s["score"]
    return out


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("method", sorted(DEFENCES))
def test_plain_transformers_predicts_what_detrigger_predicts(method, suspect, clean, reference_dir, texts, tmp_path):
    result = repair(suspect, clean, method=method, reference=reference_dir, config=tiny_config(method))
    folder = tmp_path / "repaired"
    record = result.save(folder, suspect="victims/x", clean_data="mr")
    assert not (folder / PURIFIER_FILE).exists() and record["saved"]["plain_transformers"]
    ours = predict_logits(load_victim(folder), texts)
    plain = plain_logits(folder, texts)
    assert ours.std(axis=0).min() > 100 * TOL  # a text read differently would show
    np.testing.assert_array_equal(ours.argmax(1), plain.argmax(1))
    np.testing.assert_allclose(ours, plain, rtol=0, atol=TOL)
    np.testing.assert_allclose(softmax(ours), pipeline_scores(folder, texts), rtol=0, atol=TOL)
    # the weights alone are what was saved, and the report and card say what they measure
    assert json.loads((folder / "repair.json").read_text()) == record
    heldout = clean_splits(clean, 0.1, 0).val  # the part of the clean subset the repair did not train on
    assert record["heldout_count"] == len(heldout) == 12
    assert record["accuracy_before"] == accuracy(predict(suspect, heldout.texts), heldout.labels)
    assert record["accuracy_after"] == accuracy(predict(load_victim(folder), heldout.texts), heldout.labels)
    card = (folder / "README.md").read_text()
    assert f"# Repaired with detrigger (`{method}`)" in card and "pipeline(\"text-classification\"" in card
    if result.victim.purifier is not None:
        assert record["accuracy_with_purifier"] == result.report.details[method].purified_val_accuracy
        assert record["saved"]["note"].startswith(f"not deployable as repaired: {method}'s protection")
        assert "Not deployable as repaired" in card
    else:
        assert record["accuracy_with_purifier"] is None and record["saved"]["note"] is None


def test_a_shipped_purifier_is_marked_and_plain_transformers_really_differs(suspect, clean, texts, tmp_path):
    result = repair(suspect, clean, method="mbtsad", config=tiny_config("mbtsad"))
    folder = tmp_path / "repaired"
    record = result.save(folder, ship_purifier=True)
    loaded = load_victim(folder)
    assert loaded.purifier == result.victim.purifier
    assert record["saved"]["purifier"] and not record["saved"]["plain_transformers"]
    assert record["saved"]["note"].startswith("not deployable through plain transformers")
    card = (folder / "README.md").read_text()
    assert "Not deployable through plain transformers" in card and "pipeline(" not in card
    assert 'load_victim("path/to/this/folder")' in card
    # the marking is true: words unseen in the clean subset are cut for detrigger, not for transformers
    assert any(loaded.prepare([t]) != [t] for t in texts)
    assert np.abs(predict_logits(loaded, texts) - plain_logits(folder, texts)).max() > 100 * TOL
    # a fresh process that imports only load_victim rebuilds the purifier too (its provider loads on demand)
    code = f"from detrigger import load_victim; print(load_victim({str(folder)!r}).purifier is not None)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "True", proc.stderr


def test_repair_cli_says_in_one_line_what_was_not_saved(suspect, tmp_path, mr):
    suspect_dir = suspect.save(tmp_path / "suspect")
    data = tmp_path / "clean.jsonl"
    data.write_text("\n".join(json.dumps({"text": t, "label": mr.label_names[y]})
                              for t, y in zip(mr.texts[:80], mr.labels[:80])))
    config = tmp_path / "mbtsad.json"
    config.write_text(json.dumps({"train": QUICK.model_dump(), "teacher_train": QUICK.model_dump()}))
    cli = [sys.executable, "-m", "detrigger.cli", "repair", str(suspect_dir), "--method", "mbtsad", "--clean",
           str(data), "--clean-count", "60", "--config", str(config)]
    proc = subprocess.run([*cli, "--out", str(tmp_path / "a")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stdout.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "not deployable as repaired" in warnings[0] and "--ship-purifier" in warnings[0]
    assert "held-out clean accuracy (6 texts" in proc.stdout
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [
        "README.md", "config.json", "detrigger.json", "model.safetensors", "repair.json", "tokenizer.json",
        "tokenizer_config.json"]
    proc = subprocess.run([*cli, "--out", str(tmp_path / "b"), "--ship-purifier", "--json"], capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)  # one JSON object, nothing else on stdout
    assert out["saved"]["purifier"] and PURIFIER_FILE in out["files"]
    assert out["repaired_from"] == str(suspect_dir.resolve())
    assert out == {**json.loads((tmp_path / "b" / "repair.json").read_text()), "out": str(tmp_path / "b"),
                   "files": out["files"]}
    meta = yaml.safe_load((tmp_path / "b" / "README.md").read_text().split("---")[1])
    assert meta["library_name"] == "transformers" and "backdoor-defense" in meta["tags"]
