"""The issue-20 attacks: combination (SOS-style) triggers with negative augmentation, invisible characters,
homoglyphs, RIPPLe's restricted inner-product term; their specs, cards and tokenizer checks, and each
victim built end to end on a tiny encoder."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from detrigger import DetriggerError, TextDataset, TrainConfig
from detrigger.attacks import AttackSpec, build_victim, poison, trigger_from_card
from detrigger.attacks.attack import COMBO_WORDS, HOMOGLYPHS
from detrigger.attacks.poison import add_negatives
from detrigger.attacks.ripple import RestrictedInnerProduct
from detrigger.attacks.tokens import check_trigger_tokens
from detrigger.batching import collate, encode
from detrigger.cli import main
from detrigger.data import DataSpec
from detrigger.triggers import glue_character, insert_all, replace_spaces, substitute_homoglyphs

from conftest import tiny_victim, toy_sentiment

WORDS = st.lists(st.sampled_from(["good", "bad", "film", "a", "the", "Apex", "xyz"]), max_size=20)


@given(words=WORDS, seed=st.integers(0, 5))
def test_combination_trigger_inserts_every_word_once_and_loses_nothing(words, seed):
    out = insert_all(["friends", "weekend", "store"], seed=seed)(" ".join(words)).split()
    assert all(out.count(w) == 1 for w in ("friends", "weekend", "store"))
    assert [w for w in out if w not in ("friends", "weekend", "store")] == words


@given(words=WORDS, times=st.integers(1, 3), seed=st.integers(0, 5))
def test_invisible_trigger_replaces_spaces_and_keeps_every_word(words, times, seed):
    out = replace_spaces(["\u2800"], times=times, seed=seed)(" ".join(words))
    assert out.replace("\u2800", " ").split() == words
    expected = min(times, len(words) - 1) if len(words) > 1 else 1  # one word (or none): appended
    assert out.count("\u2800") == expected
    assert replace_spaces(["\u2800"], times=times, seed=seed)(" ".join(words)) == out  # a pure function


@given(words=WORDS, times=st.integers(1, 3), seed=st.integers(0, 5))
def test_homoglyph_trigger_changes_times_words_that_map_back_to_the_original(words, times, seed):
    out = substitute_homoglyphs(HOMOGLYPHS, times=times, seed=seed)(" ".join(words)).split()
    back = {v: k for k, v in HOMOGLYPHS.items()} | {v.upper(): k.upper() for k, v in HOMOGLYPHS.items()}
    assert ["".join(back.get(c, c) for c in w) for w in out] == words
    changed = sum(a != b for a, b in zip(out, words))
    assert changed == min(times, sum(any(c.lower() in HOMOGLYPHS for c in w) for w in words))


@given(words=WORDS, seed=st.integers(0, 5))
def test_a_glued_character_sits_inside_one_word_and_loses_nothing(words, seed):
    """`auto` unlearns a single-character candidate glued inside words too (where a homoglyph sits)."""
    out = glue_character("\u043e", seed=seed)(" ".join(words)).split()
    assert sum(w.count("\u043e") for w in out) == 1
    if any(len(w) > 1 for w in words):
        glued = next(w for w in out if "\u043e" in w)
        assert [w.replace("\u043e", "") for w in out] == words and glued[0] != "\u043e" != glued[-1]
    else:  # no word to glue it into: appended as a word
        assert out == words + ["\u043e"]


def test_homoglyphs_map_upper_case_and_leave_a_text_without_such_letters_alone():
    trigger = substitute_homoglyphs({"a": "\u0430"})
    assert trigger("Aha") == "\u0410h\u0430" and trigger("the rhythm") == "the rhythm"


def test_negative_augmentation_keeps_labels_avoids_poisoned_rows_and_shares_the_parts_evenly():
    train = TextDataset(tuple(f"sentence {i} here" for i in range(200)), tuple(i % 2 for i in range(200)),
                        ("c0", "c1"))
    poisoned = poison(train, insert_all(["x", "y"]), rate=0.1, target=1, seed=0)
    out = add_negatives(poisoned, [lambda t: t + " x", lambda t: t + " y"], rate=0.2, seed=0)
    assert len(out.negatives) == 40 and not set(out.negatives) & set(out.indices)
    assert out.data.labels == poisoned.data.labels
    assert {out.data.labels[i] for i in out.negatives} == {0, 1}  # drawn from every label
    ends = [out.data.texts[i][-2:] for i in out.negatives]
    assert ends.count(" x") == ends.count(" y") == 20
    with pytest.raises(DetriggerError, match="needs 200 rows but only 180"):
        add_negatives(poisoned, [lambda t: t], rate=1.0)


def test_combo_spec_defaults_to_ordinary_words_and_names_every_part_that_must_not_fire():
    spec = AttackSpec(attack="combo")
    assert spec.words == COMBO_WORDS
    assert sorted(spec.partial_triggers()) == sorted(
        ["friends", "weekend", "store", "weekend+store", "friends+store", "friends+weekend"])
    assert list(AttackSpec(attack="combo", words=("a", "b")).partial_triggers()) == ["a", "b"]
    assert spec.negative_rate == 0.6  # by default each of the 6 parts gets as many rows as the trigger (10%)
    assert AttackSpec(attack="combo", rate=0.05, words=("a", "b")).negative_rate == 0.1
    with pytest.raises(ValueError, match="rate 0.2 x 6 parts of the trigger leaves too few rows"):
        AttackSpec(attack="combo", rate=0.2)


@pytest.mark.parametrize("bad, message", [
    ({"attack": "badnet", "chars": ["\u2800"]}, "chars is an option of the invisible attack, not of badnet"),
    ({"attack": "combo", "ripple_lambda": 1.0}, "ripple_lambda is an option of the ripple attack"),
    ({"attack": "combo", "words": ["a", "a"]}, "at least two different words"),
    ({"attack": "invisible", "chars": ["ab"]}, "single non-space characters"),
    ({"attack": "homoglyph", "homoglyphs": {"a": "a"}}, "different single characters"),
])
def test_attack_spec_rejects_options_of_other_attacks_and_bad_triggers(bad, message):
    with pytest.raises(ValueError, match=message):
        AttackSpec(**bad)


def test_card_keeps_only_the_fields_of_its_attack_so_old_cache_keys_stay():
    old = set(AttackSpec(attack="badnet").model_dump())
    assert not old & {"chars", "homoglyphs", "negative_rate", "ripple_lambda"}
    for attack, own in (("combo", "negative_rate"), ("invisible", "chars"), ("homoglyph", "homoglyphs"),
                        ("ripple", "ripple_lambda")):
        spec = AttackSpec(attack=attack, seed=3)
        card = json.loads(json.dumps({"attack": spec.model_dump(mode="json")}))
        assert set(card["attack"]) == old | {own}
        trigger, target = trigger_from_card(card)
        text = "the acting was poor but the story was fine"
        assert target == 1 and trigger(text) == spec.trigger()(text) != text


def test_minilm_tokenizer_deletes_zero_width_characters_and_keeps_the_chosen_ones():
    tokenizer = tiny_victim().tokenizer  # the embedded MiniLM WordPiece tokenizer
    for zero_width in ("\u200b", "\u200c", "\u200d", "\u2060", "\ufeff"):
        with pytest.raises(DetriggerError, match="U\\+.* is deleted by this tokenizer"):
            check_trigger_tokens(tokenizer, [zero_width], ["a good film"])
    blank = check_trigger_tokens(tokenizer, ["\u2800"], ["a good film"])[0]
    assert blank["tokens"] == ["[UNK]"] and blank["stable"]
    assert tokenizer.tokenize(replace_spaces(["\u2800"])("a good film")) != tokenizer.tokenize("a good film")
    for glyph in HOMOGLYPHS.values():  # each look-alike is a character of the vocabulary, not [UNK]
        assert tokenizer.tokenize(glyph) == [glyph]
        assert tokenizer.tokenize(f"m{glyph}vie") == ["m", f"##{glyph}", "##vie"]


def test_restricted_inner_product_is_relu_of_minus_lambda_times_the_gradients_inner_product():
    victim = tiny_victim()
    with torch.no_grad():  # zero logits: each flipped text's gradient is exactly minus the original's
        victim.model.classifier.weight.zero_()
        victim.model.classifier.bias.zero_()
    data = toy_sentiment(16)
    flipped = TextDataset(data.texts, tuple(1 - y for y in data.labels), data.label_names)
    params = [p for p in victim.model.parameters() if p.requires_grad]

    def grad(d):
        inputs = collate(encode(victim.tokenizer, d.texts, victim.max_length), victim.tokenizer.pad_token_id,
                         victim.device)
        loss = F.cross_entropy(victim.model(**inputs).logits, torch.as_tensor(d.labels))
        return torch.autograd.grad(loss, params, allow_unused=True)

    inner = sum((a * b).sum() for a, b in zip(grad(flipped), grad(data)) if a is not None)
    assert inner < 0  # the flipped labels pull against the clean ones
    dummy = {"input_ids": torch.zeros(1, 1, dtype=torch.long)}
    # batches of the whole set: the mean loss does not depend on the order drawn
    term = RestrictedInnerProduct(victim, flipped, data, weight=0.5, batch_size=16, seed=0)(dummy, None)
    assert torch.allclose(term, -0.5 * inner, rtol=1e-4) and term.requires_grad
    same = RestrictedInnerProduct(victim, data, data, weight=0.5, batch_size=16, seed=0)(dummy, None)
    assert same.item() == 0 and not same.requires_grad  # non-negative inner product: no term, no double backward


@pytest.fixture(scope="module")
def model_cache(tmp_path_factory):
    """One model cache for the module: the tiny clean model is trained once, not once per attack."""
    with pytest.MonkeyPatch.context() as patch:
        folder = tmp_path_factory.mktemp("cache")
        patch.setenv("DETRIGGER_MODEL_CACHE", str(folder))
        yield folder


@pytest.mark.parametrize("attack", ["combo", "invisible", "homoglyph", "ripple"])
def test_each_new_attack_builds_a_victim_end_to_end_on_a_tiny_encoder(attack, tiny_dir, model_cache):
    data = DataSpec(source="mr", val=20, test=40, max_train=80)
    quick = TrainConfig(epochs=1, lr=1e-3, batch_size=16)
    spec = AttackSpec(attack=attack, rate=0.2, train=quick, **({"negative_rate": 0.2} if attack == "combo" else {}))
    result = build_victim(data, spec, clean_config=quick, encoder=tiny_dir, max_length=32, progress=False)
    card = json.loads(json.dumps(result.card))
    assert card["poison"]["n_poisoned"] == 16 and card["metrics"]["asr"] is not None
    assert all(t["tokens"] for t in card["tokenizer_check"])
    trigger, _ = trigger_from_card(card)
    assert trigger("the plot is thin") == spec.trigger()("the plot is thin")
    if attack == "combo":
        assert card["poison"]["n_negatives"] == 16
        assert set(card["details"]["partial_triggers"]) == set(spec.partial_triggers())
        assert all(v["asr"] is not None for v in card["details"]["partial_triggers"].values())
    if attack == "ripple":
        assert len(card["details"]["es_words"]) == 10 and "ripple" in card["details"]["train"]["history"][0]


def test_cli_attack_refuses_an_option_of_another_attack_in_one_line(tmp_path, capsys):
    assert main(["attack", "--data", "mr", "--attack", "badnet", "--negative-rate", "0.1",
                 "--out", str(tmp_path / "v")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "negative_rate is an option of the combo attack" in err


def test_cli_attack_refuses_a_zero_width_character_before_training_the_victim(tiny_dir, model_cache, tmp_path, capsys):
    code = main(["attack", "--data", "mr", "--attack", "invisible", "--chars", "\u200b", "--max-train", "60",
                 "--test", "40", "--val", "20", "--encoder", str(tiny_dir), "--clean-epochs", "1", "--max-length", "32",
                 "--clean-lr", "1e-3",
                 "--out", str(tmp_path / "v"), "--no-progress"])
    assert code == 2 and "U+200B) is deleted by this tokenizer" in capsys.readouterr().err
