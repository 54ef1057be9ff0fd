"""LoRA adapters as suspects (docs/models.md): an adapter folder over a base model folder loads merged,
evaluates and scans as its base's family, is repaired into a plain merged folder, and never from a pickle."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
import transformers as T
from peft import PeftModel

from detrigger import DetriggerError, TrainConfig, load_victim, new_victim
from detrigger.attacks.poison import poison
from detrigger.defences import repair
from detrigger.evaluation.metrics import evaluate
from detrigger.models.predict import predict_logits
from detrigger.scan import scan
from detrigger.training import train
from detrigger.triggers import insert_words

from test_families import SCAN, corpus, make_encoder, plain_logits, tiny_config, write_csv  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")

TEXTS_AT = slice(-12, None)


@pytest.fixture(scope="module")
def adapter(corpus, mr, tmp_path_factory):  # noqa: F811  (corpus: a fixture of test_families)
    """A BadNet victim trained as a LoRA adapter (rank 4) over a tiny random RoBERTa, saved: (folder, base,
    the in-memory PEFT model's logits on a few texts)."""
    root = tmp_path_factory.mktemp("lora")
    base = make_encoder("roberta", corpus, root / "base")
    victim = new_victim(mr.label_names, encoder=base, max_length=32, lora_rank=4)
    data = poison(mr.select(range(2000, 2080)), insert_words(["cf"]), rate=0.3, target=1, seed=0).data
    train(victim, data, None, TrainConfig(epochs=2, lr=5e-3, batch_size=16), progress=False)
    texts = list(mr.texts[TEXTS_AT])
    return victim.save(root / "adapter"), base, predict_logits(victim, texts)


def test_a_lora_victim_is_made_and_loaded_without_peft_s_deprecation_warning(adapter, mr):
    # peft reads an attribute transformers deprecated; the user can do nothing about that FutureWarning
    folder, base, _ = adapter
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        new_victim(mr.label_names, encoder=base, max_length=32, lora_rank=4)
        load_victim(folder)
    assert not [w for w in caught if issubclass(w.category, FutureWarning)]


def test_an_adapter_folder_loads_merged_and_predicts_what_peft_predicts(adapter, mr):
    folder, base, in_memory = adapter
    assert {p.name for p in folder.iterdir()} >= {"adapter_config.json", "adapter_model.safetensors", "detrigger.json"}
    assert not (folder / "config.json").exists() and not (folder / "model.safetensors").exists()
    assert json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"] == str(base.resolve())
    victim = load_victim(folder)
    assert victim.info["adapter"] == {"folder": str(folder), "base": str(base.resolve()), "merged": True}
    assert not isinstance(victim.model, PeftModel) and victim.model.config.model_type == "roberta"
    texts = list(mr.texts[TEXTS_AT])
    ours = predict_logits(victim, texts)
    np.testing.assert_allclose(ours, in_memory, atol=1e-5)
    # plain peft, unmerged, reads the folder the same way
    plain = PeftModel.from_pretrained(T.AutoModelForSequenceClassification.from_pretrained(base, num_labels=2),
                                      str(folder)).eval()
    tokenizer = T.AutoTokenizer.from_pretrained(folder)
    with torch.no_grad():
        logits = plain(**tokenizer(texts, padding=True, truncation=True, max_length=32, return_tensors="pt")).logits
    np.testing.assert_allclose(ours, logits.numpy(), atol=1e-5)
    assert 0 <= evaluate(victim, mr.select(range(40))).cacc <= 1
    assert scan(victim, mr.select(range(60)), reference=base, config=SCAN).tokens


@pytest.mark.parametrize("method", ["finemixing", "auto"])
def test_a_repaired_adapter_is_a_plain_merged_folder(adapter, mr, method, tmp_path):
    folder, base, _ = adapter
    result = repair(load_victim(folder), mr.select(range(100, 160)), method=method, reference=base,
                    config=tiny_config(method))
    out = tmp_path / "repaired"
    record = result.save(out)
    assert record["base_model"] == str(base.resolve())
    assert (out / "model.safetensors").is_file() and not (out / "adapter_config.json").exists()
    texts = list(mr.texts[TEXTS_AT])
    np.testing.assert_allclose(plain_logits(out, texts), predict_logits(load_victim(out), texts), atol=1e-5)


def test_the_repair_command_says_it_merged_and_uses_the_base_as_reference(adapter, mr, tmp_path):
    folder, _, _ = adapter
    data = write_csv(tmp_path / "clean.csv", mr.texts[100:160], mr.labels[100:160], mr.label_names)
    config = tmp_path / "ft.json"
    config.write_text(json.dumps({"train": {"epochs": 1, "lr": 1e-3, "batch_size": 16}}))
    proc = subprocess.run([sys.executable, "-m", "detrigger.cli", "repair", str(folder), "--method", "epur+finemixing",
                           "--clean", str(data), "--top-n", "5", "--rho", "0.5", "--epochs", "1",
                           "--out", str(tmp_path / "out")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "LoRA adapter merged into its base" in proc.stdout and "saved merged, as a plain model folder" in proc.stdout
    assert json.loads((tmp_path / "out" / "repair.json").read_text())["details"]["epur"]["reset_rows"] == 5


def test_the_base_is_found_or_named_and_a_pickled_adapter_is_refused(adapter, tmp_path):
    folder, base, _ = adapter
    moved = shutil.copytree(folder, tmp_path / "moved")
    config = json.loads((moved / "adapter_config.json").read_text())
    (moved / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": "/nowhere/base"}))
    with pytest.raises(DetriggerError, match=r"its base model /nowhere/base is not here; pass the base model folder"):
        load_victim(moved)
    assert load_victim(moved, base=base).info["adapter"]["base"] == str(base)
    pickled = shutil.copytree(folder, tmp_path / "pickled")
    (pickled / "adapter_model.safetensors").unlink()
    torch.save({"x": torch.zeros(1)}, pickled / "adapter_model.bin")
    for allow in (False, True):
        with pytest.raises(DetriggerError, match=r"no adapter_model.safetensors \(only adapter_model.bin: a pickle"):
            load_victim(pickled, allow_pickle=allow)
