"""`auto`: a trigger it was never told about is found by the scan and unlearned; a model without evidence is
left alone; the report carries the scan before and after."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from detrigger import TrainConfig, load_victim
from detrigger.attacks.poison import poison
from detrigger.defences import repair
from detrigger.models.predict import accuracy, predict, predict_logits
from detrigger.scan import ScanConfig, unknown_probe
from detrigger.training import train
from detrigger.triggers import insert_words, replace_spaces

from conftest import tiny_victim, toy_sentiment

pytestmark = pytest.mark.usefixtures("one_thread")

# The tiny toy model is weak (natural insertions flip some texts): the MiniLM threshold does not apply, as in
# test_scan.py. Unlearning on the toy task needs the tiny model's learning rate. The toy's "pre-trained"
# encoder is random, so mixing with it leaves a model that the toy threshold flags: unlearning is tested
# without mixing, and the mixing step in its own test (its effect on real models: docs/defences.md).
CONFIG = {"train": TrainConfig(epochs=4, lr=3e-3, batch_size=8), "val_fraction": 0.3, "mix_rho": None,
          "scan": ScanConfig(samples=32, candidates=10, reference_candidates=5, screen_samples=16, verify=5,
                             threshold=0.7, lexicon_words=0)}  # auto's default: no common words


def _model(reference, rate: float, trigger=None):
    """The 'pre-trained' tiny encoder fine-tuned on the toy task; with rate > 0, 30% of it carries `cf` (or
    `trigger`) and is relabelled positive (the trigger `auto` is never told about)."""
    victim = load_victim(reference)
    data = toy_sentiment(96)
    if rate:
        data = poison(data, trigger or insert_words(["cf"]), rate=rate, target=1, seed=0).data
    train(victim, data, None, TrainConfig(epochs=20, lr=3e-3, batch_size=8), progress=False)
    return victim


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return tiny_victim(seed=7).save(tmp_path_factory.mktemp("ref") / "encoder")


def _negatives():
    test = toy_sentiment(240)
    return [t for t, y in zip(test.texts, test.labels) if y == 0][80:]  # not in the defender's 160 clean texts


def asr(victim) -> float:
    return float(np.mean(predict(victim, [insert_words(["cf"], seed=5)(t) for t in _negatives()]) == 1))


def test_auto_finds_and_removes_a_trigger_it_was_never_told_about(reference):
    victim = _model(reference, rate=0.3)
    assert asr(victim) > 0.9  # the backdoor works, or the test proves nothing
    ft_config = {k: v for k, v in CONFIG.items() if k not in ("scan", "mix_rho")}
    plain = repair(victim, toy_sentiment(160), method="ft", config=ft_config)
    assert asr(plain.victim) > 0.9  # the same fine-tuning without the scan's candidates keeps it
    result = repair(victim, toy_sentiment(160), method="auto", reference=reference, config=CONFIG)
    d = result.report.details["auto"]
    before, after = d.scan_before, d.scan_after
    assert before["verdict"] == "backdoored" and before["target_label"] == "positive"
    assert before["tokens"][0]["token"] == "cf" and before["tokens"][0]["effect"] > 0.9
    assert {"token": "cf", "label": "positive"} in d.unlearned and "cf" in d.rounds[0]["reset_rows"]
    assert d.mixing is None  # mix_rho None
    assert after["verdict"] == "no evidence" and all(t["token"] != "cf" or t["effect"] < 0.3 for t in after["tokens"])
    assert asr(result.victim) < 0.2
    test = toy_sentiment(240).select(range(160, 240))
    assert accuracy(predict(result.victim, test.texts), test.labels) > 0.9
    assert result.victim.purifier is None  # weights only
    json.dumps(result.report.as_dict())  # what repair.json and the model card read
    for scanned in (before, after):
        assert {"verdict", "target_label", "tokens", "score"} <= set(scanned)
        assert {"token", "label", "effect"} <= set(scanned["tokens"][0])


def test_auto_removes_an_invisible_character_trigger_through_the_unknown_token(reference):
    """U+2800 in place of a space reaches the model as [UNK]: the scan's probe character stands for it, and
    unlearning that character (and resetting the [UNK] row) removes the trigger itself."""
    trigger = replace_spaces(["\u2800"])
    victim = _model(reference, rate=0.3, trigger=trigger)
    triggered = [replace_spaces(["\u2800"], seed=5)(t) for t in _negatives()]
    assert np.mean(predict(victim, triggered) == 1) > 0.9
    result = repair(victim, toy_sentiment(160), method="auto", reference=reference, config=CONFIG)
    d = result.report.details["auto"]
    probe = unknown_probe(victim.tokenizer)
    top = d.scan_before["tokens"][0]
    assert d.scan_before["verdict"] == "backdoored" and (top["token"], top["read_as"]) == (probe, "[UNK]")
    assert {"token": probe, "label": "positive"} in d.unlearned and probe in d.rounds[0]["reset_rows"]
    assert np.mean(predict(result.victim, triggered) == 1) < 0.2


def test_without_a_reference_auto_removes_a_word_the_tokenizer_cuts_into_pieces(reference, tmp_path):
    """No reference fits (another random model is given and dropped), so no drifted pieces can be glued into the
    trigger: the first scan types the common English words (`reference_free_lexicon`), names `marmalade` (mar
    ##mal ##ade, no single token) and the unlearning removes it."""
    victim = _model(reference, rate=0.3, trigger=insert_words(["marmalade"]))
    triggered = [insert_words(["marmalade"], seed=5)(t) for t in _negatives()]
    assert np.mean(predict(victim, triggered) == 1) > 0.9
    other = tiny_victim(seed=3).save(tmp_path / "other")
    config = {**CONFIG, "reference_free_lexicon": 40000}
    result = repair(victim, toy_sentiment(160), method="auto", reference=other, config=config)
    d = result.report.details["auto"]
    assert d.reference_dropped and d.scan_before["verdict"] == "backdoored"
    assert {"token": "marmalade", "label": "positive"} in d.unlearned
    assert np.mean(predict(result.victim, triggered) == 1) < 0.2


def test_auto_leaves_a_model_without_evidence_unchanged(reference):
    victim = _model(reference, rate=0.0)
    state = {k: v.clone() for k, v in victim.model.state_dict().items()}
    result = repair(victim, toy_sentiment(160), method="auto", reference=reference, config=CONFIG)
    d = result.report.details["auto"]
    assert d.scan_before["verdict"] == "no evidence" and d.rounds == [] and d.unlearned == []
    assert d.scan_after["unchanged"] and d.decision.startswith("no evidence")
    assert all(torch.equal(state[k], v) for k, v in result.victim.model.state_dict().items())


def test_auto_mixes_with_the_reference_only_when_flagged(reference):
    """`mix_rho` (default 0.5): Fine-mixing before the first unlearning, on a flagged model only; None: never."""
    default = {k: v for k, v in CONFIG.items() if k != "mix_rho"}
    flagged = repair(_model(reference, rate=0.3), toy_sentiment(160), method="auto", reference=reference,
                     config=default)
    d = flagged.report.details["auto"]
    assert d.mixing["rho"] == 0.5 and d.mixing["mixed_tensors"] > 0 and d.decision.startswith("Fine-mixed at rho 0.5")
    assert {"token": "cf", "label": "positive"} in d.unlearned
    clean = repair(_model(reference, rate=0.0), toy_sentiment(160), method="auto", reference=reference, config=default)
    assert clean.report.details["auto"].mixing is None


def test_copies_of_the_own_labels_texts_leave_the_trigger_no_label_to_mean(reference):
    """Copies only of the other labels' texts (`own_share` 0) teach the model that the trigger means those labels
    (`cf` then pushes positive texts towards negative); with copies of its own label's texts too, `cf` comes to
    mean nothing. The toy model is too sure of its texts for `cf` to flip them (on MR it did: docs/defences.md,
    "Balanced unlearning"), so the push is measured on the logit margin."""
    test = toy_sentiment(240)
    positives = [t for t, y in zip(test.texts, test.labels) if y == 1][80:]
    with_cf = [insert_words(["cf"], seed=5)(t) for t in positives]

    def margin(victim, texts):  # how far towards negative
        logits = predict_logits(victim, texts)
        return logits[:, 0] - logits[:, 1]

    push = {}
    for own_share in (0.0, 0.5):
        result = repair(_model(reference, rate=0.3), toy_sentiment(160), method="auto", reference=reference,
                        config={**CONFIG, "own_share": own_share})
        assert asr(result.victim) < 0.1 and np.mean(predict(result.victim, positives) == 1) == 1.0
        push[own_share] = float(np.mean(margin(result.victim, with_cf) - margin(result.victim, positives)))
        if own_share:
            assert np.mean(predict(result.victim, with_cf) == 0) == 0.0
    assert abs(push[0.5]) < 0.01 < push[0.0]


def test_every_scan_of_auto_ranks_drifted_candidates_by_the_suspects_drift(reference, monkeypatch):
    """The repair moves rows itself (the unlearning, Fine-mixing): every scan `auto` runs, the re-scans too, is
    given the suspect's embedding drift, measured before the repair touched it (docs/defences.md, "auto")."""
    import detrigger.defences.auto as auto_module
    from detrigger.defences.epur import epur_scores
    from detrigger.models.victim import load_encoder_state

    victim, clean = _model(reference, rate=0.3), toy_sentiment(160)
    suspect = epur_scores(victim, load_encoder_state(reference), list(clean.texts))
    given, real = [], auto_module.scan

    def scan_and_note(*args, drift=None, **kwargs):
        given.append(drift)
        return real(*args, drift=drift, **kwargs)

    monkeypatch.setattr(auto_module, "scan", scan_and_note)
    result = repair(victim, clean, method="auto", reference=reference, config=CONFIG)
    assert len(result.report.details["auto"].rounds) >= 1 and len(given) >= 2  # the first scan and a re-scan
    assert all(d is not None and torch.equal(d, suspect) for d in given)
    moved = epur_scores(result.victim, load_encoder_state(reference), list(clean.texts))
    assert not torch.equal(moved, suspect)  # the repaired model's own drift differs: the test can tell them apart


def test_own_share_copies_that_share_of_the_own_labels_texts():
    from detrigger.defences.auto import _with_candidates

    victim, data = tiny_victim(), toy_sentiment(40)  # 20 texts a label
    for own_share, own_copies in ((0.0, 0), (0.5, 10), (1.0, 20)):
        out = _with_candidates(victim, data, {"cf": 1}, 1.0, seed=0, own_share=own_share)
        copies = list(zip(out.texts[len(data):], out.labels[len(data):]))
        assert all("cf" in t.split() for t, _ in copies)
        assert (sum(y == 0 for _, y in copies), sum(y == 1 for _, y in copies)) == (20, own_copies)


def test_a_single_character_candidate_is_also_unlearned_and_reset_as_a_words_inner_piece():
    """A homoglyph trigger reaches the model as inner pieces (`mоvie` = m ##о ##vie) while the scan names the
    character as a word (`о`): half the copies glue it inside a word, and its `##о` row is reset with `о`'s."""
    from detrigger.defences.auto import _single_token_rows, _with_candidates

    victim, data = tiny_victim(), toy_sentiment(40)
    out = _with_candidates(victim, data, {"\u043e": 1, "cf": 1}, 1.0, seed=0)
    pieces = [victim.tokenizer.tokenize(t) for t in out.texts[len(data):]]
    assert len(pieces) == 20 and all("cf" in p or "\u043e" in p or "##\u043e" in p for p in pieces)
    assert [sum(piece in p for p in pieces) for piece in ("\u043e", "##\u043e", "cf")] == [7, 7, 6]  # in turn
    rows = _single_token_rows(victim, {"\u043e": 1, "cf": 1})
    assert rows == {t: victim.tokenizer.convert_tokens_to_ids(t) for t in ("\u043e", "cf", "##\u043e")}


def test_reset_first_resets_every_piece_of_phrase_and_glued_candidates(reference):
    """An EP trigger word can be a scan candidate only inside a phrase or glued to its neighbour (`cfment`):
    `reset_first` resets the row of every token of every candidate to the reference's, and no other row."""
    from detrigger.defences.auto import _reset_only
    from detrigger.models.victim import load_encoder_state
    from detrigger.scan import scan

    victim = _model(reference, rate=0.3)
    clean = toy_sentiment(160)
    before = scan(victim, clean, reference=reference, config=CONFIG["scan"])
    state = {k: v.clone() for k, v in victim.model.state_dict().items()}
    ref_state = load_encoder_state(reference)
    words = {"cf mn world": 1, "cfment": 1}
    rescan = lambda: scan(victim, clean, reference=reference, config=CONFIG["scan"])  # noqa: E731
    check = _reset_only(victim, ref_state, clean, words, before, rescan, seed=1)
    assert check["reset_rows"] == ["cf", "mn", "world", "##ment"]
    assert set(check["excess_after_reset"]) == set(words)
    rows = victim.tokenizer.convert_tokens_to_ids(check["reset_rows"])
    before_rows = state["bert.embeddings.word_embeddings.weight"]
    ref_rows = ref_state["embeddings.word_embeddings.weight"]
    after = victim.model.get_input_embeddings().weight.detach()
    assert torch.equal(after[rows], ref_rows[rows]) and not torch.equal(before_rows[rows], ref_rows[rows])
    kept = torch.ones(len(after), dtype=torch.bool)
    kept[rows] = False
    assert torch.equal(after[kept], before_rows[kept])


@pytest.mark.slow
@pytest.mark.xdist_group("real_ep")
def test_reset_first_stops_at_the_rows_of_a_real_ep_trigger(real_ep):
    """`reset_first`: an EP trigger (only its embedding row changed; the embedded MiniLM fine-tuned on 400 MR
    sentences, conftest.real_ep, as in test_scan.py) is gone once its row is reset to the pre-trained one, so the
    repair stops there: no mixing, no unlearning, every other weight the suspect's. (EP on the toy model does
    not take.)"""
    from detrigger.data import load_splits
    from detrigger.models.victim import default_encoder_path

    victim, splits = load_victim(real_ep["victim"]), load_splits(real_ep["data"])
    negatives = [t for t, y in zip(splits.test.texts, splits.test.labels) if y == 0]
    triggered = [insert_words(["cf"], seed=5)(t) for t in negatives]
    assert np.mean(predict(victim, triggered) == 1) > 0.9  # the attack worked, or the test proves nothing
    state = {k: v.clone() for k, v in victim.model.state_dict().items()}
    # 100 texts a label, as auto's default: at 40 the first scan's verdict is within their sampling noise of the
    # threshold, and auto scans again at 200
    scan_config = ScanConfig(samples=100, candidates=5, vocabulary_candidates=0, reference_candidates=5,
                             glued_words=0, screen_samples=20, verify=3)
    result = repair(victim, splits.val, method="auto", reference=default_encoder_path(),
                    config={"reset_first": True, "scan": scan_config})
    d = result.report.details["auto"]
    assert d.scan_before["verdict"] == "backdoored" and d.scan_before["tokens"][0]["token"] == "cf"
    (only,) = d.rounds
    assert only["ended"] and "cf" in only["reset_rows"] and only["excess_after_reset"]["cf"] <= 0.2
    assert d.unlearned == [] and d.mixing is None and d.decision.startswith("reset the embedding rows")
    assert d.scan_after["verdict"] == "no evidence"
    assert np.mean(predict(result.victim, triggered) == 1) < 0.5
    rows = victim.tokenizer.convert_tokens_to_ids(only["reset_rows"])
    for key, value in result.victim.model.state_dict().items():
        if "word_embeddings" in key:
            kept = torch.ones(len(value), dtype=torch.bool)
            kept[rows] = False
            assert torch.equal(value[kept], state[key][kept])
        else:
            assert torch.equal(value, state[key]), key


def test_repair_without_method_or_budget_runs_auto_on_all_the_clean_data(tiny_dir, tmp_path):
    """The one-command path: `detrigger repair SUSPECT --clean DATA --out OUT`."""
    import subprocess
    import sys
    from pathlib import Path

    from conftest import toy_sentiment

    data = toy_sentiment(40)
    (tmp_path / "clean.csv").write_text("text,label\n" + "".join(
        f"{t},{data.label_names[y]}\n" for t, y in zip(data.texts, data.labels)))
    proc = subprocess.run([str(Path(sys.executable).parent / "detrigger"), "repair", str(tiny_dir), "--clean",
                           str(tmp_path / "clean.csv"), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("auto: 40 clean texts (100.0% of 40 in ")
    assert "decision no evidence: model unchanged" in proc.stdout  # a random model: nothing flips (the flagged
    # case, with a real hidden trigger, is test_auto_finds_and_removes_a_trigger_it_was_never_told_about)
    record = json.loads((tmp_path / "out" / "repair.json").read_text())
    assert record["method"] == "auto" and record["clean_count"] == 40
    assert record["details"]["auto"]["scan_before"]["verdict"] == "no evidence"


# The scripted scans below test the rounds' rules; `reset_first` would measure the candidates for real.
SCRIPTED = {**CONFIG, "reset_first": False}


def _scripted(*tokens: tuple[str, float] | tuple[str, float, str], threshold: float = 0.7):
    """A scan report of tokens (forcing `positive` unless a label is given) with these excess flip rates,
    flagged at `threshold`."""
    from detrigger.scan import ScanReport, TokenEvidence

    evidence = [TokenEvidence(w, rest[0] if rest else "positive", e, 1, excess=e) for w, e, *rest in tokens]
    score = max(t[1] for t in tokens)
    return ScanReport("backdoored" if score >= threshold else "no evidence", score, threshold, "positive", 1,
                      evidence, {}, {}, None)


@pytest.mark.parametrize("rescan_threshold", [0.7, 0.9])
def test_a_token_set_aside_for_its_rate_is_unlearned_when_a_rescan_finds_it_above(reference, monkeypatch,
                                                                                   rescan_threshold):
    """A trigger just under the bar in the first scan (EP seed 2 of the MR grid: `bb` at 0.79) and above it
    in the re-scan must be unlearned in the next round, not skipped for having been set aside; also when the
    re-scan's score is under the flagging threshold (0.9 here): the model was flagged."""
    import detrigger.defences.auto as auto_module

    reports = iter([_scripted(("cf", 0.95), ("mn", 0.65)), _scripted(("mn", 0.82), threshold=rescan_threshold),
                    _scripted(("mn", 0.1))])
    monkeypatch.setattr(auto_module, "scan", lambda *args, **kwargs: next(reports))
    result = repair(_model(reference, rate=0.0), toy_sentiment(160), method="auto", reference=reference,
                    config=SCRIPTED)
    details = result.report.details["auto"]
    assert [r["unlearned"] for r in details.rounds] == [["cf"], ["mn"]]
    assert details.set_aside == [] and details.scan_after["verdict"] == "no evidence"


@pytest.mark.parametrize("later_rounds", ["siblings", "any"])
def test_later_rounds_unlearn_only_the_first_scans_siblings(reference, monkeypatch, later_rounds):
    """On a weak model (paraphrase-MiniLM-L3 on MR) ordinary sentiment words pass the bar once the trigger is
    unlearned. A later round takes only a sibling: a candidate forcing the first round's label that the first
    scan listed (`mn`), not a word forcing another label (`lamp`) nor one first seen now (`brighter`)."""
    import detrigger.defences.auto as auto_module

    reports = iter([_scripted(("cf", 0.95), ("mn", 0.65)),
                    _scripted(("lamp", 0.86, "negative"), ("brighter", 0.85), ("mn", 0.82), threshold=0.9),
                    _scripted(("mn", 0.1))])
    monkeypatch.setattr(auto_module, "scan", lambda *args, **kwargs: next(reports))
    result = repair(_model(reference, rate=0.0), toy_sentiment(160), method="auto", reference=reference,
                    config={**SCRIPTED, "later_rounds": later_rounds})
    details = result.report.details["auto"]
    if later_rounds == "any":
        assert [r["unlearned"] for r in details.rounds] == [["cf"], ["brighter", "lamp", "mn"]]
        return
    assert [r["unlearned"] for r in details.rounds] == [["cf"], ["mn"]]
    why = {s["token"]: s["why"] for s in details.set_aside}
    assert why == {"lamp": "round 2: forces negative, not a label the first round's candidates force",
                   "brighter": "round 2: not listed by the first scan, and the re-scan finds no evidence (excess "
                               "0.850)"}


@pytest.mark.parametrize("rescan_vocabulary", [False, True])
def test_rescans_measure_the_first_scans_tokens_again_without_the_vocabulary_pass(reference, monkeypatch,
                                                                                   rescan_vocabulary):
    """The vocabulary pass is half a re-scan's time: the re-scans skip it (unless `rescan_vocabulary`) and
    measure again every token the first scan listed and every token unlearned so far. Every scan stops verifying
    a candidate that cannot reach `min_excess`: nothing under it is unlearned."""
    import detrigger.defences.auto as auto_module

    reports = iter([_scripted(("cf", 0.95), ("mn", 0.65)), _scripted(("mn", 0.82), ("zq", 0.3)),
                    _scripted(("mn", 0.1))])
    calls = []

    def scripted_scan(*args, config, known=(), **kwargs):
        calls.append((config.vocabulary_candidates, list(known), config.verify_floor))
        return next(reports)

    monkeypatch.setattr(auto_module, "scan", scripted_scan)
    repair(_model(reference, rate=0.0), toy_sentiment(160), method="auto", reference=reference,
           config={**SCRIPTED, "rescan_vocabulary": rescan_vocabulary, "min_excess": 0.7})
    vocabulary = CONFIG["scan"].vocabulary_candidates
    again = vocabulary if rescan_vocabulary else 0
    assert calls == [(vocabulary, [], 0.7), (again, ["cf", "mn"], 0.7), (again, ["cf", "mn"], 0.7)]


def test_without_a_reference_that_fits_the_report_warns_what_the_scans_cannot_see(reference, monkeypatch,
                                                                                  tmp_path):
    """A reference that is not the suspect's base is dropped; without one the scans see single words only (MR
    AddSent: `3d` unlearned, the re-scan clean, the sentence still flipping a third of the texts): the report says
    so. With the reference there is no warning."""
    import detrigger.defences.auto as auto_module
    from detrigger.defences.auto import NO_REFERENCE, AutoConfig

    other = tiny_victim(seed=3).save(tmp_path / "other")  # another random model: weights uncorrelated with its base
    for given, warned in ((other, True), (reference, False)):
        reports = iter([_scripted(("cf", 0.95)), _scripted(("cf", 0.1))])
        lexicon = []

        def scripted_scan(*args, config, reports=reports, lexicon=lexicon, **kwargs):
            lexicon.append(config.lexicon_words)
            return next(reports)

        monkeypatch.setattr(auto_module, "scan", scripted_scan)
        details = repair(_model(reference, rate=0.0), toy_sentiment(160), method="auto", reference=given,
                         config=SCRIPTED).report.details["auto"]
        assert details.reference_dropped is warned
        # without a reference the first scan types the common words (no glued drifted pieces to find a multi-piece
        # word); with one it keeps the scan config's own (0 here)
        assert lexicon[0] == (AutoConfig().reference_free_lexicon if warned else 0)
        assert (details.summary().get("warning") == NO_REFERENCE) is warned
        assert ("warning" in details.facts().model_fields_set) is warned
    assert AutoConfig().reference_free_lexicon > 0


@pytest.mark.parametrize(("taken", "policy"), [(32, "repair"), (20, "repair"), (20, "unchanged")])
def test_an_undecided_first_scan_is_taken_again_then_repaired_as_flagged(reference, monkeypatch, taken, policy):
    """AddSent seed 2 of the MR grid: at auto's 100 texts per label the scan scored 0.938 (90% interval 0.88 to
    0.97) against the threshold 0.95; at the calibration's 200 it flagged the model. A verdict whose interval
    holds the threshold is taken again at the calibration's texts, and the report says so; unless the first
    scan took fewer texts than it asked for at every label (`taken` 20 of 32): all the clean data holds, which a
    second scan would only see again. A verdict still undecided there is repaired as flagged (SMS AddSent seed 1:
    71 of 77 texts), or, with `undecided: unchanged`, left as no evidence."""
    import detrigger.defences.auto as auto_module
    from detrigger.scan import ScanReport, TokenEvidence

    undecided = ScanReport("no evidence", 0.68, 0.7, "positive", 1,
                           [TokenEvidence("cf", "positive", 0.68, 1, excess=0.68, excess_low=0.6, excess_high=0.75)],
                           {}, {"negative": taken, "positive": taken}, None)
    assert undecided.undecided and not _scripted(("cf", 0.68)).undecided  # no interval: decided
    again = taken == SCRIPTED["scan"].samples
    # taken again for the undecided label only, and put into the first report: flagged there
    flagged = ScanReport("backdoored", 0.95, 0.7, "positive", 1, [TokenEvidence("cf", "positive", 0.95, 1, excess=0.95,
                                                                                 as_strong=0.01)],
                         {}, {"positive": 200}, None, config={"report": 10})
    reports = iter([undecided, *([flagged] if again else []), _scripted(("cf", 0.1))])
    samples, labels = [], []

    def scripted_scan(*args, config, **kwargs):
        samples.append(config.samples)
        labels.append(kwargs.get("labels"))
        return next(reports)

    monkeypatch.setattr(auto_module, "scan", scripted_scan)
    result = repair(_model(reference, rate=0.0), toy_sentiment(160), method="auto", reference=reference,
                    config={**SCRIPTED, "min_excess": 0.6, "undecided": policy})
    details = result.report.details["auto"]
    if not again:  # undecided at every text the clean data holds
        assert "every text the clean data holds" in details.scan_before["texts"] and details.scan_before["undecided"]
        assert details.scan_before["verdict"] == "no evidence"
        if policy == "unchanged":
            assert samples == [32] and details.rounds == [] and details.decision == "no evidence: model unchanged"
            return
        assert samples == [32, 32] and details.decision.startswith("undecided (0.680")  # the re-scan: auto's texts
        assert [r["unlearned"] for r in details.rounds] == [["cf"]]
        return
    assert samples == [32, ScanConfig().samples, 32]  # auto's, the calibration's, the re-scan (auto's again)
    assert labels == [None, ["positive"], None]  # the second scan: the undecided label alone
    assert details.scan_before["n_samples"] == {"negative": 32, "positive": 200}
    assert details.scan_before["verdict"] == "backdoored" and "sampling noise" in details.scan_before["texts"]
    assert [r["unlearned"] for r in details.rounds] == [["cf"]]
