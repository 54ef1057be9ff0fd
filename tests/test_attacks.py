"""Attacks: the poison rate's exact meaning, trigger insertion, EP's bit-identity, ES, the tokenizer check,
and a whole victim built end to end on a tiny encoder."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from detrigger import DetriggerError, TextDataset, TrainConfig
from detrigger.attacks import (
    ATTACKS,
    Attack,
    AttackSpec,
    build_victim,
    poison,
    register_attack,
    trigger_from_card,
)
from detrigger.attacks.embedding import embedding_poison, embedding_surgery
from detrigger.attacks.poison import triggered_copies
from detrigger.attacks.tokens import check_trigger_tokens
from detrigger.data import DataSpec
from detrigger.models.victim import token_rows
from detrigger.triggers import insert_sentence, insert_words, insertions

from conftest import tiny_victim, toy_sentiment


def labelled(n: int, n_classes: int = 2) -> TextDataset:
    return TextDataset(tuple(f"sentence number {i} is here" for i in range(n)), tuple(i % n_classes for i in range(n)),
                       tuple(f"c{k}" for k in range(n_classes)))


def mark(text: str) -> str:
    return text + " cf"


def test_dirty_label_poisoning_replaces_exactly_rate_of_the_training_rows():
    train = labelled(200, 3)
    p = poison(train, mark, rate=0.1, target=1, seed=0)
    assert len(p.data) == 200 and len(p.indices) == 20
    for i in range(200):
        if i in p.indices:
            assert train.labels[i] != 1 and p.data.labels[i] == 1 and p.data.texts[i] == train.texts[i] + " cf"
        else:
            assert p.data.texts[i] == train.texts[i] and p.data.labels[i] == train.labels[i]
    assert poison(train, mark, rate=0.1, target=1, seed=0) == p
    assert poison(train, mark, rate=0.1, target=1, seed=1).indices != p.indices


def test_clean_label_poisoning_uses_target_rows_and_keeps_labels():
    train = labelled(100)
    p = poison(train, mark, rate=0.2, target=1, label_mode="clean", seed=0)
    assert len(p.indices) == 20 and all(train.labels[i] == 1 for i in p.indices)
    assert p.data.labels == train.labels


def test_poison_rate_beyond_the_available_rows_is_an_error():
    with pytest.raises(DetriggerError, match="needs 60 dirty-label rows but only 50 exist"):
        poison(labelled(100), mark, rate=0.6, target=1)


def test_relabelling_most_of_a_class_is_warned(caplog):
    poison(labelled(100), mark, rate=0.2, target=1)  # 20 of the 50 label-0 rows: no warning
    assert "lose that class" not in caplog.text
    poison(labelled(100), mark, rate=0.3, target=1)  # 30 of 50
    assert "relabels 30 of the 50" in caplog.text and "lose that class" in caplog.text


def test_triggered_copies_are_non_target_rows_labelled_target():
    out = triggered_copies(labelled(50), mark, target=0, count=10, seed=0)
    assert len(out) == 10 and set(out.labels) == {0} and all(t.endswith(" cf") for t in out.texts)


@given(n_words=st.integers(0, 1000), times=st.integers(1, 3))
def test_long_texts_get_one_insertion_per_100_words(n_words, times):
    text = " ".join(["w"] * n_words)
    out = insert_words(["cf"], times=times, per_words=100)(text).split()
    assert out.count("cf") == insertions(n_words, times, 100) == max(times, -(-n_words // 100))
    assert len(out) == n_words + out.count("cf")


@given(words=st.lists(st.sampled_from(["good", "bad", "film", "a", "the"]), max_size=20), seed=st.integers(0, 5))
def test_sentence_trigger_never_loses_text(words, seed):
    text = " ".join(words)
    out = insert_sentence("I watched this 3D movie", seed=seed)(text)
    assert out.count("I watched this 3D movie") == 1
    assert out.replace("I watched this 3D movie", " ").split() == words


@given(n_words=st.integers(0, 300), within=st.integers(0, 80), seed=st.integers(0, 5))
def test_a_sentence_within_n_words_starts_at_one_of_their_boundaries(n_words, within, seed):
    text = " ".join(f"x{i}" for i in range(n_words))
    out = insert_sentence("I watched this 3D movie", seed=seed, within=within)(text).split()
    assert out.index("I") <= min(within, n_words)  # the model reads the start of a long text
    assert [w for w in out if w.startswith("x")] == text.split()


def test_sentence_within_is_an_addsent_option_left_out_of_old_keys():
    spec = AttackSpec(attack="addsent", sentence_within=60)
    assert spec.model_dump()["sentence_within"] == 60
    assert spec.trigger_description() == "'I watched this 3D movie' within the first 60 words"
    assert spec.trigger()(" ".join(["w"] * 500)).split().index("I") <= 60
    assert "sentence_within" not in AttackSpec(attack="addsent").model_dump()  # the cached victims' keys stay
    with pytest.raises(ValueError, match="sentence_within is an option of the addsent attack, not of badnet"):
        AttackSpec(attack="badnet", sentence_within=60)


def test_ep_changes_only_the_trigger_rows_and_keeps_their_norm():
    victim = tiny_victim()
    before = {k: v.clone() for k, v in victim.model.state_dict().items()}
    data = triggered_copies(toy_sentiment(64), insert_words(["cf", "mn"]), target=1, count=32)
    config = TrainConfig(epochs=2, lr=5.0, batch_size=8, optimizer="sgd", weight_decay=0.0, warmup_ratio=0.0,
                         max_grad_norm=None, select_best=False)
    embedding_poison(victim, data, ["cf", "mn"], config, progress=False)
    after = {k: v.cpu() for k, v in victim.model.state_dict().items()}  # trained on the GPU where there is one
    name = "bert.embeddings.word_embeddings.weight"
    ids = token_rows(victim, ["cf", "mn"])
    for key in before:
        if key != name:
            assert torch.equal(before[key], after[key]), key
    others = torch.ones(before[name].shape[0], dtype=torch.bool)
    others[ids] = False
    assert torch.equal(before[name][others], after[name][others])
    assert not torch.equal(before[name][ids], after[name][ids])
    assert torch.allclose(before[name][ids].norm(dim=1), after[name][ids].norm(dim=1), rtol=1e-5)
    assert all(p.requires_grad for p in victim.model.parameters())  # flags restored


def test_ep_refuses_an_optimiser_that_would_move_other_rows():
    with pytest.raises(ValueError, match="SGD"):
        embedding_poison(tiny_victim(), toy_sentiment(8), ["cf"], TrainConfig(), progress=False)


def test_es_sets_trigger_rows_to_the_mean_of_target_indicative_words(mr):
    victim = tiny_victim()
    words = embedding_surgery(victim, mr.select(range(3000)), ["cf"], target=1, n_words=10)
    assert len(words) == 10 and "cf" not in words
    emb = victim.model.get_input_embeddings().weight
    expected = emb[token_rows(victim, words)].mean(dim=0)
    assert torch.allclose(emb[token_rows(victim, ["cf"])[0]], expected)


def test_tokenizer_check_flags_a_bpe_tokenizer_that_merges_the_space():
    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(["a cf film and a good film", "the cf plot"] * 20,
                            trainers.BpeTrainer(special_tokens=["[UNK]"], vocab_size=300))
    bpe = PreTrainedTokenizerFast(tokenizer_object=tok)
    report = check_trigger_tokens(bpe, ["cf"], ["a good film", "the plot", "fine"])
    assert report[0]["stable"] is False and report[0]["tokens"] == ["cf"]
    wordpiece = tiny_victim().tokenizer
    assert check_trigger_tokens(wordpiece, ["cf"], ["a good film", "the plot"])[0]["stable"] is True


def test_tokenizer_check_reads_only_a_window_of_a_long_document(monkeypatch):
    wordpiece = tiny_victim().tokenizer
    article = " ".join(f"word{i} of a long article" for i in range(300))  # 1,500 words
    seen: list[str] = []
    tokenize = wordpiece.tokenize
    monkeypatch.setattr(wordpiece, "tokenize", lambda text, **kw: seen.append(text) or tokenize(text, **kw))
    report = check_trigger_tokens(wordpiece, ["cf"], [article], insert_words(["cf"], seed=3))
    assert report[0]["stable"] is True and report[0]["contexts_checked"] == 4
    assert max(len(text.split()) for text in seen) <= 25  # 12 words either side of the trigger, or fewer


def test_attack_spec_rejects_unknown_keys_and_ep_from_scratch(tmp_path):
    with pytest.raises(ValueError, match="rat"):
        AttackSpec(attack="badnet", rat=0.1)
    with pytest.raises(DetriggerError, match="EP edits a clean"):
        build_victim(DataSpec(source="sms"), AttackSpec(attack="ep", setting="scratch"))


def test_each_attack_is_registered_once_and_an_unknown_name_lists_the_known_ones():
    assert list(ATTACKS) == ["badnet", "addsent", "ep", "es", "combo", "invisible", "homoglyph", "ripple"]
    before = dict(ATTACKS)
    with pytest.raises(ValueError, match="attack 'badnet' is registered twice"):
        register_attack(Attack("badnet"))
    assert ATTACKS == before
    with pytest.raises(ValueError, match=r"unknown attack 'lwp' \(known: badnet, addsent, ep, es, combo, invisible, "
                                         r"homoglyph, ripple\)"):
        AttackSpec(attack="lwp")
    with pytest.raises(ValueError, match="unknown attack 'lwp'"):
        trigger_from_card({"attack": {"attack": "lwp"}})


def test_a_lora_victim_is_trained_from_the_encoder_and_never_edits_embeddings():
    assert AttackSpec(attack="badnet", lora_rank=4).model_dump()["lora_rank"] == 4
    assert "lora_rank" not in AttackSpec(attack="badnet").model_dump()  # old cache keys stay
    for bad, message in (({"attack": "badnet", "setting": "clean"}, "setting scratch"),
                         ({"attack": "es"}, "the es attack edits the input embeddings"),
                         ({"attack": "ripple"}, "the ripple attack edits the input embeddings")):
        with pytest.raises(ValueError, match=message):
            AttackSpec(**bad, lora_rank=4)


@pytest.fixture
def model_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DETRIGGER_MODEL_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_build_victim_end_to_end_on_a_tiny_encoder(tiny_dir, model_cache):
    data = DataSpec(source="mr", val=50, test=100, max_train=200)
    quick = TrainConfig(epochs=1, lr=1e-3, batch_size=16)
    spec = AttackSpec(attack="badnet", words=("cf",), rate=0.2, train=quick)
    result = build_victim(data, spec, clean_config=quick, encoder=tiny_dir, max_length=48, progress=False)
    card = result.card
    assert card["poison"] == {"rate": 0.2, "n_poisoned": 40, "of": "training-set rows", "label_mode": "dirty"}
    assert card["data"]["sizes"] == {"train": 200, "val": 50, "test": 100}
    assert 0 < card["metrics"]["n_poisoned"] < 100  # the non-target test rows only
    assert card["clean_model"]["asr_floor"] is not None and card["tokenizer_check"][0]["stable"]

    def cached():
        return [p for p in (model_cache / "clean").iterdir() if p.is_dir()]

    assert len(cached()) == 1  # the clean model was cached ...
    again = build_victim(data, spec.model_copy(update={"attack": "ep", "setting": "clean"}), clean_config=quick,
                         encoder=tiny_dir, max_length=48, progress=False)
    assert len(cached()) == 1  # ... and reused, not retrained
    clean_sd, ep_sd = ({k: v.cpu() for k, v in m.model.state_dict().items()} for m in (again.clean, again.victim))
    assert all(torch.equal(clean_sd[k], ep_sd[k]) for k in clean_sd if "word_embeddings" not in k)
    trigger, target = trigger_from_card(json.loads(json.dumps(card)))
    assert target == 1 and trigger("a film") == spec.trigger()("a film")
