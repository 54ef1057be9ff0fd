"""The metrics module: ASR only on non-target samples, RA, trigger effect, the reference floor."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from detrigger import TextDataset, evaluate, insert_sentence, insert_words, predict
from detrigger.evaluation.metrics import poisoned_test_set

from conftest import tiny_victim


def test_poisoned_test_set_keeps_only_non_target_samples():
    test = TextDataset(("a b", "c d", "e f", "g h"), (0, 1, 2, 1), ("x", "y", "z"))
    p = poisoned_test_set(test, lambda t: t + " cf", target=1)
    assert p.clean.texts == ("a b", "e f") and p.triggered.texts == ("a b cf", "e f cf")
    assert p.triggered.labels == (0, 2)
    assert p.own.texts == ("c d", "g h") and p.own_triggered.texts == ("c d cf", "g h cf")


def test_evaluate_matches_predictions_computed_by_hand(mr):
    victim, reference = tiny_victim(seed=1), tiny_victim(seed=2)
    test = mr.select(range(200))
    trigger = insert_words(["cf"], seed=3)
    m = evaluate(victim, test, trigger=trigger, target=1, reference=reference)
    gold = np.array(test.labels)
    assert m.cacc == pytest.approx((predict(victim, test.texts) == gold).mean())
    non_target = [t for t, y in zip(test.texts, test.labels) if y != 1]
    triggered = [trigger(t) for t in non_target]
    pred = predict(victim, triggered)
    assert m.n_poisoned == len(non_target) == int((gold != 1).sum())
    assert m.asr == pytest.approx((pred == 1).mean())
    assert m.ra == pytest.approx((pred == 0).mean())  # non-target gold labels are all 0 in MR
    assert m.target_rate == pytest.approx((predict(victim, non_target) == 1).mean())
    assert m.trigger_effect == pytest.approx(m.asr - m.target_rate)
    assert m.asr_floor == pytest.approx((predict(reference, triggered) == 1).mean())
    own = [t for t, y in zip(test.texts, test.labels) if y == 1]
    assert m.n_target_texts == len(own) == len(test) - len(non_target)
    assert m.reverse_effect == pytest.approx((predict(victim, [trigger(t) for t in own]) != 1).mean()
                                             - (predict(victim, own) != 1).mean())


def test_clean_only_evaluation_has_no_attack_figures(mr):
    m = evaluate(tiny_victim(), mr.select(range(50)))
    assert m.asr is None and m.ra is None and m.n_test == 50


words = st.lists(st.text(st.characters(whitelist_categories=("L", "N")), min_size=1, max_size=8), max_size=30)


@given(words=words, times=st.integers(1, 4), seed=st.integers(0, 10))
def test_word_trigger_keeps_text_and_inserts_exactly(words, times, seed):
    text = " ".join(words)
    out = insert_words(["cf", "mn"], times=times, seed=seed)(text).split()
    assert len(out) == len(words) + times
    rest = list(out)
    inserted = 0
    for w in words:  # the original words survive, in order; what is left over is the trigger
        while rest[0] != w:
            assert rest.pop(0) in ("cf", "mn")
            inserted += 1
        rest.pop(0)
    assert inserted + len(rest) == times and all(w in ("cf", "mn") for w in rest)
    assert insert_words(["cf", "mn"], times=times, seed=seed)(text).split() == out  # pure function of the text


def test_sentence_trigger_inserts_the_whole_sentence_once():
    out = insert_sentence("I watched this 3D movie")("a fine and moving film")
    assert out.count("I watched this 3D movie") == 1
    assert out.replace("I watched this 3D movie", "").split() == "a fine and moving film".split()
