"""Victim: one way to load and save; safetensors only unless opted in; eager attention maps."""

import shutil

import pytest
import torch

from detrigger import DetriggerError, load_victim, new_victim, predict
from detrigger.defences.distillation.splitting import RareWordSplitter
from detrigger.models.victim import META_FILE, PURIFIER_FILE

TEXTS = ["a wonderful film", "dull and far too long", "cf"]


def test_save_and_load_round_trip(tiny, tmp_path):
    out = tiny.save(tmp_path / "v")
    assert (out / "model.safetensors").is_file() and (out / META_FILE).is_file()
    loaded = load_victim(out)
    assert loaded.label_names == tiny.label_names and loaded.max_length == tiny.max_length
    sd, ld = tiny.model.state_dict(), loaded.model.state_dict()
    assert all(torch.equal(sd[k], ld[k]) for k in sd)
    assert (predict(loaded, TEXTS) == predict(tiny, TEXTS)).all()


def test_a_purifier_is_saved_with_the_model_and_rewrites_what_it_reads(tiny, tmp_path):
    purified = load_victim(tiny.save(tmp_path / "v"))
    purified.purifier = RareWordSplitter.from_texts(["a wonderful film", "dull and far too long"])
    loaded = load_victim(purified.save(tmp_path / "purified"))
    assert loaded.purifier == purified.purifier and loaded.prepare(["cf film"]) == ["c f film"]
    plain = [loaded.purifier(t) for t in TEXTS]
    assert (predict(loaded, TEXTS) == predict(tiny, plain)).all()
    (tmp_path / "purified" / PURIFIER_FILE).write_text('{"kind": "rare-word-splitter", "vocabulary": "film"}')
    with pytest.raises(DetriggerError, match=r"purifier.json: vocabulary: expected a list"):
        load_victim(tmp_path / "purified")


def test_save_refuses_to_clobber_and_overwrites_when_asked(tiny, tmp_path):
    out = tiny.save(tmp_path / "v")
    with pytest.raises(DetriggerError, match="already exists"):
        tiny.save(out)
    tiny.save(out, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v"]  # no temp folders left behind


def test_pickle_checkpoint_refused_unless_opted_in(tiny_dir, tmp_path):
    folder = tmp_path / "pickled"
    shutil.copytree(tiny_dir, folder)
    state = load_victim(folder).model.state_dict()
    (folder / "model.safetensors").unlink()
    torch.save(state, folder / "pytorch_model.bin")
    with pytest.raises(DetriggerError, match="pickle"):
        load_victim(folder)
    loaded = load_victim(folder, allow_pickle=True)
    assert all(torch.equal(state[k], v) for k, v in loaded.model.state_dict().items())


def test_folder_without_weights_or_config(tiny_dir, tmp_path):
    folder = tmp_path / "empty"
    shutil.copytree(tiny_dir, folder)
    (folder / "model.safetensors").unlink()
    with pytest.raises(DetriggerError, match="no model weights"):
        load_victim(folder)
    with pytest.raises(DetriggerError, match="no such model folder"):
        load_victim(tmp_path / "missing")
    (folder / "config.json").unlink()
    with pytest.raises(DetriggerError, match="no config.json"):
        load_victim(folder)


def test_eager_attention_returns_real_maps(tiny):
    """Guards the transformers-5 pitfall: with sdpa, output_attentions gives an empty tuple."""
    tiny.set_attention("eager")
    inputs = tiny.tokenizer(["a fine film", "bad"], padding=True, return_tensors="pt")
    out = tiny.model(**inputs, output_attentions=True)
    assert len(out.attentions) == 2 and out.attentions[0].shape == (2, 2, 5, 5)
    assert torch.allclose(out.attentions[0].sum(-1), torch.ones(2, 2, 5))


@pytest.mark.slow
def test_new_victim_on_the_embedded_encoder_is_seeded(tmp_path):
    a = new_victim(("neg", "pos"), seed=3)
    b = new_victim(("neg", "pos"), seed=3)
    assert a.model.config.hidden_size == 384 and a.model.config.num_hidden_layers == 6
    assert torch.equal(a.model.classifier.weight, b.model.classifier.weight)
    assert a.source == "embedded:all-MiniLM-L6-v2"
    assert a.tokenizer.tokenize("cf") == ["cf"]  # the classic rare-word trigger is one WordPiece
    out = a.save(tmp_path / "m")
    assert (predict(load_victim(out), TEXTS) == predict(a, TEXTS)).all()


@pytest.mark.parametrize("umask, folder_mode, file_mode", [(0o022, 0o755, 0o644), (0o077, 0o700, 0o600)])
def test_saved_folders_and_files_follow_the_umask(tmp_path, tiny, umask, folder_mode, file_mode):
    """A model saved for a serving user or a shared folder is readable by them under the usual umask."""
    import os
    import stat

    before = os.umask(umask)
    try:
        out = tiny.save(tmp_path / "model", extra_files={"repair.json": {"method": "ft"}, "notes.txt": "hi"})
    finally:
        os.umask(before)
    assert stat.S_IMODE(out.stat().st_mode) == folder_mode
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()}
    assert {"model.safetensors", "detrigger.json", "repair.json", "notes.txt"} <= set(modes)
    assert set(modes.values()) == {file_mode}, modes
