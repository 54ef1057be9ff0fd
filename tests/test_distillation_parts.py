"""MBTSAD building blocks: token splitting (properties) and the distillation losses."""

from __future__ import annotations

import copy
import subprocess
import sys

import numpy as np
import torch
from hypothesis import given
from hypothesis import strategies as st

from detrigger import TextDataset, TrainConfig, train
from detrigger.defences.distillation.losses import (
    FORWARD_KWARGS,
    attention_loss,
    distillation,
    hidden_loss,
    prepare_student,
)
from detrigger.defences.distillation.splitting import WORD, RareWordSplitter, split_dataset, split_text

from conftest import tiny_victim, toy_sentiment

words = st.lists(st.from_regex(r"[a-z]{1,10}|[A-Z][a-z]{0,8}[,.!]?|\d{1,3}", fullmatch=True), min_size=1, max_size=25)


@given(words=words, seed=st.integers(0, 100), probability=st.sampled_from([0.0, 0.5, 1.0]))
def test_splitting_only_inserts_spaces(words, seed, probability):
    text = " ".join(words)
    out = split_text(text, np.random.default_rng(seed), probability)
    assert out.replace(" ", "") == text.replace(" ", "")
    eligible = sum(1 for w in words for run in WORD.findall(w) if len(run) >= 2)
    added = out.count(" ") - text.count(" ")
    assert 0 <= added <= eligible
    if probability == 1.0:
        assert added == eligible
    if probability == 0.0:
        assert out == text


@given(words=st.lists(st.sampled_from(["good", "film", "a", "the", "plot", "bad", "dull"]), max_size=15),
       position=st.integers(0, 15), seed=st.integers(0, 50))
def test_a_two_letter_trigger_never_survives_whole(words, position, seed):
    words = list(words)
    words.insert(min(position, len(words)), "cf")
    out = split_text(" ".join(words), np.random.default_rng(seed))
    assert "cf" not in out.split() and "c f" in out


def test_split_dataset_keeps_labels_copies_and_originals():
    data = TextDataset(("a lovely film", "dull"), (1, 0), ("neg", "pos"))
    out = split_dataset(data, copies=2, keep_originals=True, seed=0)
    assert len(out) == 6 and out.labels == (1, 0, 1, 0, 1, 0)
    assert out.texts[4:] == data.texts and all(t != o for t, o in zip(out.texts[:2], data.texts))
    assert split_dataset(data, seed=3) == split_dataset(data, seed=3)


@given(words=words, seed=st.integers(0, 100))
def test_the_purifier_cuts_exactly_the_unseen_words_and_always_the_same_way(words, seed):
    text = " ".join(words)
    seen = RareWordSplitter.from_texts(["The plot was GOOD", "a dull film"], seed=seed)
    out = seen(text)
    assert out.replace(" ", "") == text.replace(" ", "") and seen(text) == out
    unseen = sum(1 for w in words for run in WORD.findall(w) if len(run) >= 2 and run.lower() not in seen.vocabulary)
    assert out.count(" ") - text.count(" ") == unseen


def test_the_purifier_leaves_clean_words_and_cuts_a_trigger():
    purifier = RareWordSplitter.from_texts(["the film was great", "The film was awful", "awful"], min_count=2)
    assert purifier.vocabulary == {"the", "film", "was", "awful"}
    assert purifier("The film was cf awful") == "The film was c f awful"
    assert RareWordSplitter.from_dict(purifier.as_dict()) == purifier


def batch_outputs(victim, texts):
    inputs = victim.tokenizer(texts, padding=True, return_tensors="pt")
    inputs = {k: inputs[k].to(victim.model.device) for k in ("input_ids", "attention_mask")}
    return inputs, victim.model(**inputs, **FORWARD_KWARGS)


def test_losses_are_zero_for_identical_models_and_positive_otherwise():
    a = tiny_victim(seed=0)
    a.set_attention("eager")
    b = copy.deepcopy(a)
    c = tiny_victim(seed=1)
    c.set_attention("eager")
    inputs, out_a = batch_outputs(a, ["a fine film indeed", "bad"])
    _, out_b = batch_outputs(b, ["a fine film indeed", "bad"])
    _, out_c = batch_outputs(c, ["a fine film indeed", "bad"])
    mask = inputs["attention_mask"]
    assert len(out_a.attentions) == 2  # the empty-tuple pitfall would make this 0
    assert attention_loss(out_a.attentions, out_b.attentions, mask) == 0
    assert hidden_loss(out_a.hidden_states, out_b.hidden_states, mask) == 0
    assert attention_loss(out_a.attentions, out_c.attentions, mask) > 0
    assert hidden_loss(out_a.hidden_states, out_c.hidden_states, mask) > 0


def test_pad_positions_do_not_contribute():
    a, c = tiny_victim(seed=0), tiny_victim(seed=1)
    for v in (a, c):
        v.set_attention("eager")
    inputs, out_a = batch_outputs(a, ["a fine film indeed", "bad"])
    _, out_c = batch_outputs(c, ["a fine film indeed", "bad"])
    mask = inputs["attention_mask"]
    assert mask[1].sum() < mask.shape[1]  # the second row is padded
    att = attention_loss(out_a.attentions, out_c.attentions, mask)
    hid = hidden_loss(out_a.hidden_states, out_c.hidden_states, mask)
    noisy_att = [t.clone() for t in out_c.attentions]
    noisy_hid = [t.clone() for t in out_c.hidden_states]
    for t in noisy_att:
        t[1, :, :, mask[1] == 0] += 5.0  # garbage at pad keys ...
        t[1, :, mask[1] == 0, :] += 5.0  # ... and pad queries
    for t in noisy_hid:
        t[1, mask[1] == 0] += 5.0
    assert torch.allclose(attention_loss(out_a.attentions, noisy_att, mask), att)
    assert torch.allclose(hidden_loss(out_a.hidden_states, noisy_hid, mask), hid)


def test_prepare_student_turns_attention_dropout_off_in_train_mode():
    def maps_repeat(v):
        v.model.train()
        _, first = batch_outputs(v, ["a fine film"])
        _, second = batch_outputs(v, ["a fine film"])
        return all(torch.equal(x, y) for x, y in zip(first.attentions, second.attentions))

    v = tiny_victim()
    v.set_attention("eager")
    for name, module in v.model.named_modules():  # hidden dropout off, attention dropout strong
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.5 if "attention.self" in name else 0.0
    assert not maps_repeat(v)
    prepare_student(v)
    assert maps_repeat(v)


def test_distillation_term_pulls_the_student_towards_the_teacher():
    teacher, student = tiny_victim(seed=0), tiny_victim(seed=1)
    prepare_student(student)
    term = distillation(teacher, beta_att=10.0, beta_hid=1.0)
    data = toy_sentiment(32)
    inputs, out = batch_outputs(student, list(data.texts[:8]))
    before = term(inputs, out).item()
    train(student, data, None, TrainConfig(epochs=4, lr=3e-3, batch_size=8), extra_losses={"distill": term},
          forward_kwargs=FORWARD_KWARGS, progress=False)
    inputs, out = batch_outputs(student, list(data.texts[:8]))
    assert term(inputs, out).item() < before
    assert not any(p.requires_grad for p in teacher.model.parameters())


def test_representation_plot_cli_writes_both_projections(tiny_dir, tmp_path):
    from detrigger.evaluation.representations import sentence_vectors

    victim = tiny_victim()
    cls, mean = sentence_vectors(victim, ["a film", "the plot was fine"]), sentence_vectors(victim, ["a film"], "mean")
    assert cls.shape == (2, 32) and mean.shape == (1, 32) and not np.allclose(cls[0], mean[0])
    proc = subprocess.run([sys.executable, "-m", "detrigger.cli", "plot", "representations", str(tiny_dir),
                           str(tiny_dir), "--data", "mr", "--samples", "20", "--trigger-word", "cf", "--out",
                           str(tmp_path / "img")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert {p.name for p in (tmp_path / "img").iterdir()} == {"representations-pca.png", "representations-tsne.png"}
    proc = subprocess.run([sys.executable, "-m", "detrigger.cli", "plot", "representations", str(tiny_dir),
                           "--data", "mr", "--out", str(tmp_path / "x")], capture_output=True, text=True)
    assert proc.returncode == 2 and "give --trigger-word" in proc.stderr and not (tmp_path / "x").exists()
