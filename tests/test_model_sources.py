"""Where a suspect comes from (docs/models.md): hub ids through the Hugging Face cache, offline-safe (no test
touches the network), and a label map that matches a downloaded model's label names to a corpus's."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import huggingface_hub.constants
import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification

from detrigger import DetriggerError, load_victim
from detrigger.models.victim import parse_label_map

from conftest import tiny_victim


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache, offline."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return tmp_path / "hub"


def test_a_cached_hub_id_loads_offline_and_an_uncached_one_says_what_to_do(tiny_dir, offline_cache):
    snapshot = offline_cache / "models--someorg--tiny" / "snapshots" / ("a" * 40)
    shutil.copytree(tiny_dir, snapshot)  # the layout `hf download someorg/tiny` leaves
    (offline_cache / "models--someorg--tiny" / "refs").mkdir()
    (offline_cache / "models--someorg--tiny" / "refs" / "main").write_text("a" * 40)
    victim = load_victim("someorg/tiny")
    assert victim.label_names == load_victim(tiny_dir).label_names
    with pytest.raises(DetriggerError, match=r"^someorg/absent: no such model folder, and not in the Hugging Face "
                                             r"cache .*`hf download someorg/absent`.* or pass a local model folder$"):
        load_victim("someorg/absent")


def test_the_cli_refuses_an_uncached_hub_id_offline_in_one_line(tmp_path, mr):
    data = tmp_path / "clean.jsonl"
    data.write_text("\n".join(json.dumps({"text": t, "label": mr.label_names[y]})
                              for t, y in zip(mr.texts[:20], mr.labels[:20])))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    proc = subprocess.run([sys.executable, "-m", "detrigger.cli", "scan", "someorg/absent", "--clean", str(data)],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "hf download someorg/absent" in proc.stderr


def test_a_label_map_matches_generic_labels_to_a_corpus(tmp_path, mr):
    folder = tmp_path / "generic"
    model = tiny_victim().model
    model.config.id2label, model.config.label2id = {0: "LABEL_0", 1: "LABEL_1"}, {"LABEL_0": 0, "LABEL_1": 1}
    model.save_pretrained(folder)  # a plain transformers folder, no detrigger.json
    tiny_victim().tokenizer.save_pretrained(folder)
    victim = load_victim(folder)
    assert victim.label_names == ("LABEL_0", "LABEL_1")
    (tmp_path / "map.json").write_text(json.dumps({"LABEL_0": "negative", "LABEL_1": "positive"}))
    assert parse_label_map(str(tmp_path / "map.json")) == parse_label_map("LABEL_0=negative, LABEL_1=positive")
    victim.rename_labels(parse_label_map("LABEL_0=negative,LABEL_1=positive"))
    assert victim.label_names == mr.label_names
    saved = victim.save(tmp_path / "renamed")  # the names travel with the model, for plain transformers too
    assert AutoModelForSequenceClassification.from_pretrained(saved).config.id2label == {0: "negative", 1: "positive"}
    for bad, message in (("LABEL_7=negative", "'LABEL_7' is not a label of the model"),
                         ("LABEL_0=x,LABEL_1=x", "not all different"), ("LABEL_0", "expected MODEL_LABEL=DATA_LABEL")):
        with pytest.raises(DetriggerError, match=message):
            load_victim(folder).rename_labels(parse_label_map(bad))
    data = tmp_path / "clean.jsonl"
    data.write_text("\n".join(json.dumps({"text": t, "label": mr.label_names[y]})
                              for t, y in zip(mr.texts[:40], mr.labels[:40])))
    cli = [sys.executable, "-m", "detrigger.cli", "eval", str(folder), str(data), "--json"]
    proc = subprocess.run([*cli, "--label-map", "LABEL_0=negative,LABEL_1=positive"], capture_output=True, text=True)
    assert proc.returncode == 0 and json.loads(proc.stdout)["n_test"] == 40, proc.stderr
    proc = subprocess.run(cli, capture_output=True, text=True)
    assert proc.returncode == 2 and "LABEL_0, LABEL_1" in proc.stderr


def _cache_snapshot(cache, folder, repo="someorg/tiny"):
    """`folder` laid out in a Hugging Face cache as `hf download REPO` leaves it."""
    root = cache / f"models--{repo.replace('/', '--')}"
    shutil.copytree(folder, root / "snapshots" / ("a" * 40))
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text("a" * 40)
    return root / "snapshots" / ("a" * 40)


def test_train_and_attack_refuse_an_uncached_hub_encoder_offline_in_one_line(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
           "DETRIGGER_MODEL_CACHE": str(tmp_path / "cache")}
    data = ["--data", "mr", "--max-train", "40", "--val", "10", "--test", "10", "--encoder", "someorg/absent"]
    for command in (["train", *data, "--out", str(tmp_path / "m")],
                    ["attack", *data, "--attack", "badnet", "--out", str(tmp_path / "v")]):
        proc = subprocess.run([sys.executable, "-m", "detrigger.cli", *command], capture_output=True, text=True,
                              env=env)
        errors = [line for line in proc.stderr.splitlines() if line.startswith("detrigger: error:")]
        assert proc.returncode == 2 and len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert "someorg/absent: no such model folder" in errors[0] and "hf download someorg/absent" in errors[0]
    assert not (tmp_path / "m").exists() and not (tmp_path / "v").exists()


def test_attack_lora_on_a_cached_hub_encoder_saves_an_adapter_that_loads_back(tiny_dir, offline_cache, tmp_path):
    from peft import PeftModel
    from transformers import AutoTokenizer

    from detrigger.data import DataSpec, load_splits
    from detrigger.evaluation.metrics import evaluate
    from detrigger.models.predict import predict_logits

    snapshot = _cache_snapshot(offline_cache, tiny_dir)
    out = tmp_path / "victim"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(offline_cache),
           "DETRIGGER_MODEL_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-m", "detrigger.cli", "attack", "--data", "mr", "--attack", "badnet",
                           "--encoder", "someorg/tiny", "--lora", "4", "--lr", "5e-3", "--max-train", "100", "--val",
                           "40", "--test", "60", "--epochs", "1", "--clean-epochs", "1", "--max-length", "48",
                           "--out", str(out), "--no-progress"], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "adapter_model.safetensors: a LoRA adapter" in proc.stdout
    files = {p.name for p in out.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "attack.json", "detrigger.json"} <= files
    assert "model.safetensors" not in files
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == "someorg/tiny" and adapter["r"] == 4  # the hub id, portable
    card = json.loads((out / "attack.json").read_text())
    assert card["attack"]["lora_rank"] == 4
    victim = load_victim(out)  # merged over the cached base, offline
    assert victim.info["adapter"]["merged"] and victim.info["adapter"]["base"] == "someorg/tiny"
    test = load_splits(DataSpec(**{k: v for k, v in card["data"].items() if k != "sizes"})).test
    assert evaluate(victim, test).cacc == card["metrics"]["cacc"]
    # plain transformers + peft, unmerged, over the base snapshot: the same logits
    plain = PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(snapshot), str(out)).eval()
    texts = list(test.texts[:8])
    inputs = AutoTokenizer.from_pretrained(out)(texts, padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        logits = plain(**inputs).logits.numpy()
    np.testing.assert_allclose(predict_logits(victim, texts), logits, atol=1e-5)
