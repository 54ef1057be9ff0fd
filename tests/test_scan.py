"""Scan: the ranking finds a planted word trigger, with and without a reference; the report format."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from detrigger import TrainConfig, load_victim
from detrigger.attacks.poison import poison
from detrigger.errors import DetriggerError
from detrigger.models.predict import predict, predict_logits
from detrigger.scan import (
    STAGES,
    ScanConfig,
    as_strong,
    excess,
    gradient_ranking,
    scan,
    typed_words,
    unknown_probe,
    vocabulary_pass,
    word_pieces,
)
from detrigger.training import train
from detrigger.triggers import insert_words, replace_spaces

from conftest import cli, fails_cleanly, tiny_victim, toy_sentiment


@pytest.fixture(scope="module")
def word_victim(tmp_path_factory):
    """A tiny model fine-tuned from a 'pre-trained' reference on the toy task with 30% of the texts
    carrying `cf` and relabelled positive (a word trigger; EP on a hidden-32 model stays weak: one renormed
    row cannot dominate, so the real EP victims are scanned in docs/scan.md)."""
    reference = tiny_victim(seed=7).save(tmp_path_factory.mktemp("ref") / "encoder")
    victim = load_victim(reference)
    poisoned = poison(toy_sentiment(96), insert_words(["cf"]), rate=0.3, target=1, seed=0).data
    train(victim, poisoned, None, TrainConfig(epochs=20, lr=3e-3, batch_size=8), progress=False)
    folder = victim.save(tmp_path_factory.mktemp("badnet") / "victim")
    return victim, reference, folder


@pytest.fixture(scope="module")
def clean_folder(word_victim, tmp_path_factory):
    """The same recipe without poisoning: a clean tiny model."""
    _, reference, _ = word_victim
    victim = load_victim(reference)
    train(victim, toy_sentiment(96), None, TrainConfig(epochs=20, lr=3e-3, batch_size=8), progress=False)
    return victim.save(tmp_path_factory.mktemp("clean") / "model")


# The tiny toy model is weak (any insertion flips some texts): the calibrated MiniLM threshold does not apply.
# The vocabulary pass has its own tests; without it these scans take a second less each.
QUICK = ScanConfig(samples=32, candidates=10, vocabulary_candidates=0, reference_candidates=5, threshold=0.4)


def test_word_trigger_ranks_first_with_a_reference(word_victim):
    victim, reference, _ = word_victim
    report = scan(victim, toy_sentiment(80), reference=reference, config=QUICK)
    top = report.tokens[0]
    assert top.token == "cf" and top.label == "positive" and report.target_label == "positive"
    assert top.effect > 0.9 and top.drift_score is not None and report.verdict == "backdoored"
    assert report.tokens[0].drift_score == max(t.drift_score for t in report.tokens if t.drift_score is not None)
    assert report.score == top.excess
    # the samples leave out the texts already predicted positive: without the trigger none of them is
    negatives = [t for t, y in zip(toy_sentiment(80).texts, toy_sentiment(80).labels) if y == 0]
    already = (predict(victim, negatives) == 1).mean()
    assert report.base_rates["positive"] == pytest.approx(already, abs=1e-4)
    assert report.n_samples["positive"] == min(QUICK.samples, round(len(negatives) * (1 - already)))


def test_word_trigger_is_found_without_a_reference(word_victim):
    victim, _, _ = word_victim
    report = scan(victim, toy_sentiment(80), config=QUICK)
    cf = [t for t in report.tokens if t.token == "cf"]
    assert cf and cf[0].gradient_rank <= 10 and report.tokens.index(cf[0]) < 5
    assert all(t.drift_score is None for t in report.tokens) and report.reference is None


def test_gradient_ranking_ignores_the_row_norm(word_victim):
    """ES trigger rows are averages of word embeddings with small norms: the score must not punish that."""
    victim, _, _ = word_victim
    texts = [t for t in toy_sentiment(40).texts if "cf" not in t]
    cf = victim.tokenizer.convert_tokens_to_ids("cf")
    before = gradient_ranking(victim, texts, target=1, seed=0, batch_size=16)
    embedding = victim.model.get_input_embeddings().weight
    original = embedding.data[cf].clone()
    try:
        embedding.data[cf] *= 0.05
        after = gradient_ranking(victim, texts, target=1, seed=0, batch_size=16)
    finally:
        embedding.data[cf] = original
    assert after[cf] == pytest.approx(before[cf].item(), rel=1e-4)
    assert (after > after[cf]).sum() == (before > before[cf]).sum()  # the same rank


def test_second_round_adds_the_best_tokens_at_the_first_rounds_best(word_victim):
    """Round 2 inserts round 1's best token and adds its own best new tokens; every candidate is measured."""
    victim, _, _ = word_victim
    clean = toy_sentiment(80)
    config = ScanConfig(samples=32, candidates=4, rounds=2, vocabulary_candidates=0, screen_samples=0, verify=100,
                        report=100)
    measured = {t.token for t in scan(victim, clean, config=config).tokens if t.label == "negative"}
    assert unknown_probe(victim.tokenizer) in measured  # the unknown token, a candidate of its own
    measured.discard(unknown_probe(victim.tokenizer))
    # what the scan should have done for its first label: the same 32 texts, two rankings
    pool = [t for t, y in zip(clean.texts, clean.labels) if y != 0]
    pool = [t for t, p in zip(pool, predict(victim, pool)) if p != 0]
    texts = [pool[i] for i in np.random.default_rng(0).permutation(len(pool))[:32]]
    typed = typed_words(victim)
    allowed = torch.tensor([w is not None for w in typed])
    rankings, at = [], None
    for _ in range(2):
        signal = gradient_ranking(victim, texts, target=0, seed=0, batch_size=config.batch_size, at=at)
        signal[~allowed] = -torch.inf
        rankings.append([typed[i] for i in torch.argsort(signal, descending=True)[:50].tolist()])
        at = rankings[-1][0]
    second = [w for w in rankings[1] if w not in rankings[0][:4]][:4]
    assert len(measured) == 8 and measured == set(rankings[0][:4]) | set(second)
    assert rankings[0][:4] != rankings[1][:4]  # the second round really ranks at another point


def test_vocabulary_pass_puts_every_word_through_the_model(word_victim):
    """Every whole word alone, then the shortlist before a short clean text of the other label: the score is
    the label's log-probability there, and the trigger leads the words the clean texts do not contain (the
    scan sets task words such as 'great' aside after verification)."""
    victim, _, _ = word_victim
    clean = toy_sentiment(80)
    words = [w for w in typed_words(victim) if w is not None]
    scores = vocabulary_pass(victim, clean, words, "fp32", 64, shortlist=20, saturated=1.0)  # no prefix pass
    assert scores.shape == (len(words), 2)
    listed = scores[:, 1].isfinite()
    assert 20 <= int(listed.sum()) <= 40 and bool(listed.eq(scores[:, 0].isfinite()).all())
    seen = {w for t in clean.texts for w in t.lower().split()}
    unseen = [words[i] for i in torch.argsort(scores[:, 1], descending=True).tolist() if words[i] not in seen]
    assert unseen[0] == "cf"
    # by definition: log P(positive) with the word typed before the negative text the model is surest of
    negatives = sorted((t for t, y in zip(clean.texts, clean.labels) if y == 0), key=len)[:20]
    surest = negatives[int(torch.from_numpy(predict_logits(victim, negatives)).log_softmax(-1)[:, 0].argmax())]
    logp = torch.from_numpy(predict_logits(victim, [f"cf {surest}"])).log_softmax(-1)[0, 1]
    assert float(scores[words.index("cf"), 1]) == pytest.approx(float(logp), abs=1e-4)


def test_a_label_every_word_alone_is_given_is_ranked_before_a_prefix_of_the_other_label(word_victim):
    """The toy victim gives nearly every word alone `negative` at p > 0.99 (as an SMS model gives ham), so
    "alone" cannot rank words for it: its shortlist comes from every word typed before the first words of the
    surest positive text that the model already calls positive."""
    from detrigger.scan import _clear_prefix

    victim, _, _ = word_victim
    clean = toy_sentiment(80)
    words = [w for w in typed_words(victim) if w is not None]
    alone = torch.from_numpy(predict_logits(victim, words)).softmax(-1)
    assert float((alone[:, 0] > 0.99).float().mean()) > 0.5 > float((alone[:, 1] > 0.99).float().mean())
    positives = sorted((t for t, y in zip(clean.texts, clean.labels) if y == 1), key=len)[:20]
    surest = positives[int(torch.from_numpy(predict_logits(victim, positives)).log_softmax(-1)[:, 1].argmax())]
    prefix = _clear_prefix(victim, surest, 1, "fp32")

    def positive(text: str) -> float:
        return float(torch.from_numpy(predict_logits(victim, [text])).softmax(-1)[0, 1])

    assert surest.startswith(prefix) and positive(prefix) > 0.95
    shorter = prefix.rsplit(" ", 1)[0]
    assert shorter == prefix or positive(shorter) <= 0.95  # the first words that do, not more
    before = torch.from_numpy(predict_logits(victim, [f"{w} {prefix}" for w in words])).log_softmax(-1)[:, 0]
    best = torch.topk(before, 5).indices
    plain = vocabulary_pass(victim, clean, words, "fp32", 64, shortlist=5, saturated=1.0)
    scores = vocabulary_pass(victim, clean, words, "fp32", 64, shortlist=5)
    assert bool(scores[best, 0].isfinite().all()) and not bool(plain[best, 0].isfinite().all())
    assert bool(scores[plain[:, 0].isfinite(), 0].isfinite().all())  # the alone shortlist stays


def test_the_vocabulary_pass_best_words_are_verified(word_victim):
    """The pass's best words of each label join the candidates measured by real insertion (whole words here: a
    common word can yield its place to its first piece, tested below)."""
    victim, _, _ = word_victim
    config = ScanConfig(samples=32, candidates=1, rounds=1, vocabulary_candidates=3, screen_samples=0, verify=100,
                        report=100, precision="fp32", lexicon_words=0)
    report = scan(victim, toy_sentiment(80), config=config)
    for label in ("negative", "positive"):
        ranks = sorted(t.vocabulary_rank for t in report.tokens if t.label == label and t.vocabulary_rank)
        assert ranks[:3] == [1, 2, 3]
    off = scan(victim, toy_sentiment(80), config=config.model_copy(update={"vocabulary_candidates": 0}))
    assert all(t.vocabulary_rank is None for t in off.tokens) and len(off.tokens) < len(report.tokens)


def test_screening_keeps_the_trigger_and_measures_only_the_best(word_victim):
    victim, reference, _ = word_victim
    config = QUICK.model_copy(update={"screen_samples": 12, "verify": 3})
    report = scan(victim, toy_sentiment(80), reference=reference, config=config)
    assert report.tokens[0].token == "cf" and report.target_label == "positive"
    assert len(report.tokens) == 2 * 3  # only the verified candidates of each label are reported
    full = scan(victim, toy_sentiment(80), reference=reference, config=QUICK)
    assert report.tokens[0].effect == full.tokens[0].effect  # verified on the same texts as without screening


def test_verification_stops_a_candidate_that_cannot_reach_the_floor(word_victim):
    """Verified candidates are measured a screening's worth of texts at a time, and one stops once even flipping
    every text left would keep it under `verify_floor`: the trigger is measured on every text, as without the
    floor, and a stopped candidate reports its effect over the texts it was measured on."""
    victim, reference, _ = word_victim
    config = QUICK.model_copy(update={"screen_samples": 8, "verify": 4, "threshold": 0.9, "verify_floor": 0.9})
    report = scan(victim, toy_sentiment(80), reference=reference, config=config)
    full = scan(victim, toy_sentiment(80), reference=reference, config=config.model_copy(update={"verify_floor": 0}))
    samples = report.n_samples["positive"]
    assert report.tokens[0].token == full.tokens[0].token == "cf"
    assert report.tokens[0].texts == samples and report.tokens[0].effect == full.tokens[0].effect
    assert all(t.texts == full.n_samples[t.label] for t in full.tokens)
    stopped = [t for t in report.tokens if t.texts < report.n_samples[t.label]]
    assert stopped and all(t.excess < 0.9 and t.texts % 8 == 0 for t in stopped)
    strong = {(t.token, t.label, t.effect) for t in full.tokens if t.excess >= 0.9}
    assert strong == {(t.token, t.label, t.effect) for t in report.tokens if t.excess >= 0.9}
    assert report.verdict == full.verdict and report.score == full.score


def test_the_verdict_is_relative_to_what_ordinary_words_do(word_victim):
    """The score is the best candidate's excess over the model's null: ordinary words of the clean texts,
    inserted the same way, measured on the same texts; the report carries that null."""
    victim, _, _ = word_victim
    config = QUICK.model_copy(update={"null_words": 12, "screen_samples": 0})  # the null on all the texts
    report = scan(victim, toy_sentiment(80), config=config)
    null = report.null["positive"]
    assert null.words == 12 and null.texts == report.n_samples["positive"] and 0 <= null.rate <= 1
    assert len(null.top) == 3 and null.top[0][1] >= null.top[-1][1]
    top = report.tokens[0]
    assert top.excess == pytest.approx((top.effect - null.rate) / (1 - null.rate), abs=1e-3)
    assert top.excess_low < top.excess and report.score == top.excess
    text = report.text()
    assert f"ordinary words of the clean texts flip {100 * null.rate:.1f}% on average" in text


def test_a_label_the_model_already_gives_most_texts_gets_a_warning(word_victim):
    """Shift the head so that the model puts about 70% of the negative texts in positive: the few left flip
    easily, so the report warns that evidence for `positive` is weak; its tokens still count for the verdict
    (leaving the label out hid a real EP trigger of a weak MR model)."""
    from detrigger.models.predict import predict_logits

    _, _, folder = word_victim
    victim = load_victim(folder)
    clean = toy_sentiment(80)
    negatives = [t for t, y in zip(clean.texts, clean.labels) if y == 0]
    logits = predict_logits(victim, negatives)
    margin = np.quantile(logits[:, 0] - logits[:, 1], 0.7)
    with torch.no_grad():
        victim.model.classifier.bias[1] += float(margin)
    report = scan(victim, clean, config=QUICK)
    assert report.base_rates["positive"] >= 0.5 and list(report.warnings) == ["positive"]
    # a warning only: the label's tokens still make the score
    assert report.score == max(t.excess for t in report.tokens if not t.task_word)
    assert "warning, positive: the model already predicts it for" in report.text()


def test_excess_is_the_flip_rate_on_a_model_where_ordinary_words_flip_nothing():
    assert excess(150, 200, 0.0)[0] == pytest.approx(0.75)
    assert excess(150, 200, 0.5)[0] == pytest.approx(0.5)  # half of what ordinary words leave unflipped
    assert excess(0, 200, 0.3)[0] < 0  # flips less than an ordinary word
    value, low_many, _ = excess(190, 200, 0.1)
    _, low_few, _ = excess(19, 20, 0.1)
    assert low_few < low_many < value  # fewer texts, a wider interval


def test_as_strong_counts_the_vocabulary_words_expected_to_flip_as_many_texts():
    """The beta-binomial tail of the random words' flips, times the vocabulary: a word that flips every text
    stands out of a null where random words flip a few texts (a healthy model), not of one where they flip
    anything from none to most (an undertrained one)."""
    rng = np.random.default_rng(0)
    healthy = rng.binomial(25, rng.beta(0.5, 8, size=40))  # about 6% on average, a few words at 20-40%
    weak = rng.binomial(25, rng.beta(0.8, 1.2, size=40))  # about 40% on average, some at 90%
    assert as_strong(200, 200, healthy, 25, 23_000) < 0.01
    assert as_strong(200, 200, weak, 25, 23_000) > 10
    assert as_strong(150, 200, healthy, 25, 23_000) > as_strong(200, 200, healthy, 25, 23_000)  # fewer, more
    fired = healthy.copy()
    fired[:3] = 24  # three random words the backdoor fires on too (a BadNet victim's `nad`): the bulk decides
    assert as_strong(200, 200, fired, 25, 23_000) < 0.01
    assert as_strong(0, 200, weak, 25, 23_000) == pytest.approx(23_000)  # every word flips at least none
    nothing = np.zeros(40, dtype=int)  # a null that flipped no text: still not certainty that no word would
    assert as_strong(200, 200, nothing, 25, 23_000) < 1e-6 and as_strong(1, 200, nothing, 25, 23_000) > 1


def test_a_weak_clean_model_is_not_flagged_by_words_that_do_not_stand_out(clean_folder, word_victim):
    """The toy clean model is weak: random words of the vocabulary flip a third of its negative texts. At a
    threshold its best natural words reach, they are no evidence, since many vocabulary words are expected
    to flip as many texts; the victim's `cf`, which flips every text, stands out at the same threshold."""
    config = QUICK.model_copy(update={"threshold": 0.3})
    clean = scan(load_victim(clean_folder), toy_sentiment(80), config=config)
    best = clean.best
    assert best.excess >= 0.3 and best.as_strong >= 1 and clean.verdict == "no evidence"
    assert clean.vocabulary_null[best.label].words == config.null_words
    assert "it does not stand out, so it is no evidence of a backdoor" in clean.text()
    victim = scan(word_victim[0], toy_sentiment(80), config=config)
    assert victim.best.token == "cf" and victim.best.as_strong < 1 and victim.verdict == "backdoored"
    assert "(it stands out)" in victim.text()


@pytest.fixture(scope="module")
def marmalade_victim(word_victim):
    """The word victim's recipe with `marmalade` (mar ##mal ##ade), a word that is no single token, as the trigger."""
    _, reference, _ = word_victim
    victim = load_victim(reference)
    assert victim.tokenizer.tokenize("marmalade") == ["mar", "##mal", "##ade"]
    poisoned = poison(toy_sentiment(96), insert_words(["marmalade"]), rate=0.3, target=1, seed=0).data
    train(victim, poisoned, None, TrainConfig(epochs=20, lr=3e-3, batch_size=8), progress=False)
    return victim, reference


def test_a_common_word_the_tokenizer_cuts_into_pieces_is_found_without_a_reference(marmalade_victim):
    """`lexicon_words`: the vocabulary pass also types the common English words that are no single token, so a
    trigger such as `marmalade` (mar ##mal ##ade) is a candidate, found by insertion, with no reference; without
    the lexicon no candidate is the word."""
    from detrigger.lexicon import pieced_words

    victim, _ = marmalade_victim
    assert "marmalade" in pieced_words(victim.tokenizer, 40000) and "film" not in pieced_words(victim.tokenizer, 40000)
    config = QUICK.model_copy(update={"vocabulary_candidates": 10, "lexicon_words": 40000, "report": 100})
    report = scan(victim, toy_sentiment(80), config=config)
    found = [t for t in report.tokens if t.token == "marmalade"]
    assert found and found[0].label == "positive" and found[0].effect > 0.9 and found[0].vocabulary_rank <= 10
    assert found[0].gradient_rank is None and report.vocabulary_words == len(typed_words(victim)) - typed_words(
        victim).count(None) + len(pieced_words(victim.tokenizer, 40000))
    without = scan(victim, toy_sentiment(80), config=config.model_copy(update={"lexicon_words": 0}))
    assert "marmalade" not in {t.token for t in without.tokens}


def test_with_a_reference_the_common_words_made_of_drifted_pieces_are_typed(marmalade_victim):
    """`drifted_lexicon`: with a reference and no `lexicon_words`, the common words with two or more pieces among the
    most-drifted tokens are typed too (a multi-piece trigger's pieces drift together), so `marmalade` itself is
    measured; without it the drift only glues pieces (`marmal`), and the word is no candidate."""
    victim, reference = marmalade_victim
    config = QUICK.model_copy(update={"vocabulary_candidates": 10, "lexicon_words": 0, "drifted_lexicon": 20,
                                      "report": 100})
    report = scan(victim, toy_sentiment(80), reference=reference, config=config)
    found = [t for t in report.tokens if t.token == "marmalade"]
    assert found and found[0].label == "positive" and found[0].effect > 0.9 and found[0].vocabulary_rank <= 10
    without = scan(victim, toy_sentiment(80), reference=reference,
                   config=config.model_copy(update={"drifted_lexicon": 0}))
    assert "marmalade" not in {t.token for t in without.tokens}


def test_a_common_word_made_of_a_trigger_and_a_piece_yields_its_place_to_the_trigger(word_victim):
    """`cfs` (cf ##s) is the trigger `cf` plus a letter: every such relative flips as the trigger does, and on an ES
    victim they took all the vocabulary pass's places from the triggers. A common word whose first piece is a whole
    word about as label-like yields its place to that piece; a multi-piece trigger keeps its own (previous test)."""
    from detrigger.lexicon import pieced_words

    victim, _, _ = word_victim
    relatives = [w for w in pieced_words(victim.tokenizer, 40000) if victim.tokenizer.tokenize(w)[0] == "cf"]
    assert {"cfs", "cfo"} <= set(relatives)
    # fp32: the toy model gives many words alone p ~ 1, and bf16 rounding ties their scores in any order
    config = QUICK.model_copy(update={"candidates": 0, "rounds": 1, "vocabulary_candidates": 5,
                                      "lexicon_words": 40000, "report": 100, "precision": "fp32"})
    report = scan(victim, toy_sentiment(80), config=config)
    listed = {t.token for t in report.tokens if t.label == "positive"}
    assert "cf" in listed and not listed & set(relatives), listed


def test_drifted_pieces_are_glued_into_word_candidates(word_victim):
    """With a reference, the most-drifted start piece is glued to a drifted continuation piece and the typed
    word is measured like any candidate (a multi-piece trigger's rows drift together)."""
    _, reference, folder = word_victim
    victim = load_victim(folder)
    rows = victim.model.get_input_embeddings().weight.data
    ids = victim.tokenizer.convert_tokens_to_ids
    for piece in ("mar", "##mal"):
        rows[ids(piece)] += 3.0  # drift far from the reference
    start, cont = word_pieces(victim)
    assert start[ids("mar")] and cont[ids("##mal")] and not start[ids("##mal")] and not start[ids("[CLS]")]
    config = ScanConfig(samples=16, candidates=2, rounds=1, reference_candidates=1, glued_words=1,
                        screen_samples=0, verify=100, report=100)
    report = scan(victim, toy_sentiment(40), reference=reference, config=config)
    glued = [t for t in report.tokens if t.token == "marmal"]
    assert len(glued) == 2 and all(t.drift_score is None and t.gradient_rank is None for t in glued)
    assert {t.token for t in report.tokens} >= {"mar", "marmal"}  # the start piece is a whole word too


def test_typed_words_are_whole_typeable_words():
    victim = tiny_victim()
    typed = typed_words(victim)
    vocab = victim.tokenizer.convert_ids_to_tokens(list(range(len(typed))))
    allowed = {vocab[i] for i, w in enumerate(typed) if w is not None}
    assert {"cf", "film", "the"} <= allowed
    assert not allowed & {"[CLS]", "[MASK]", "[PAD]", "##s", ",", "."}


def test_report_text_json_and_cli(word_victim, tmp_path, capsys):
    victim, reference, folder = word_victim
    report = scan(victim, toy_sentiment(40), config=ScanConfig(samples=16, candidates=3, report=3))
    text = report.text()
    assert text.splitlines()[0].startswith(f"verdict: {report.verdict} (score ")
    assert "most likely target label: " in text and len(report.tokens) == 3
    assert json.loads(json.dumps(report.as_dict()))["tokens"][0]["token"] == report.tokens[0].token
    # where the time went: the stages that ran, within the scan's wall time, on the report's last line
    assert {"vocabulary pass", "texts", "gradient", "insertions"} <= set(report.stage_seconds) <= set(STAGES)
    assert sum(report.stage_seconds.values()) <= report.seconds + 0.1 and "insertions" in text.splitlines()[-1]
    data = tmp_path / "clean.jsonl"
    ds = toy_sentiment(40)
    data.write_text("\n".join(json.dumps({"text": t, "label": ds.label_names[y]}) for t, y in zip(ds.texts, ds.labels)))
    proc = subprocess.run([sys.executable, "-m", "detrigger.cli", "scan", str(folder), "--clean", str(data),
                           "--reference", str(reference), "--samples", "16", "--candidates", "5", "--threshold", "0.4",
                           "--lexicon-words", "0", "--json"],
                          capture_output=True, text=True)
    assert proc.returncode == 1, proc.stderr  # flagged
    out = json.loads(proc.stdout)
    assert out["tokens"][0]["token"] == "cf" and out["verdict"] == "backdoored"
    assert out["undecided"] is False  # the verdict's 90% interval does not hold the threshold
    typeable = typed_words(victim)
    assert out["vocabulary_words"] == len(typeable) - typeable.count(None)  # whole words only: no common words
    assert "scan:" not in proc.stderr  # no progress bar when stderr is not a terminal
    fails_cleanly(capsys, ["scan", str(folder), "--clean", str(data), "--samples", "3"], "samples")


def test_the_json_report_says_whether_the_verdict_is_undecided():
    """`--json` carries `undecided` (the best candidate's 90% interval holds the threshold), which `auto` repairs as
    flagged: a pipeline reading the verdict alone would take it for no evidence."""
    from detrigger.scan import ScanReport, TokenEvidence

    def report(low: float, high: float) -> ScanReport:
        top = TokenEvidence("cf", "positive", 0.92, 1, excess=0.92, excess_low=low, excess_high=high)
        return ScanReport("no evidence", 0.92, 0.95, "positive", 1, [top], {}, {"negative": 77, "positive": 77}, None)

    assert json.loads(json.dumps(report(0.856, 0.959).as_dict()))["undecided"] is True
    assert report(0.86, 0.94).as_dict()["undecided"] is False


def test_scan_exit_status_gates_a_pipeline(clean_folder, word_victim, tmp_path, capsys):
    """0 no evidence, 1 flagged, 2 error, as `--help` says: the flagged scan as a pipeline runs it (the
    executable's exit status), the rest through `detrigger.cli.main` in this process."""
    _, _, victim_folder = word_victim
    data = tmp_path / "clean.jsonl"
    ds = toy_sentiment(40)
    data.write_text("\n".join(json.dumps({"text": t, "label": ds.label_names[y]}) for t, y in zip(ds.texts, ds.labels)))
    # one threshold for both: the toy clean model's natural words flip up to about 0.45 of the texts, `cf` all
    args = ["--clean", str(data), "--samples", "16", "--candidates", "5", "--threshold", "0.9"]
    code, out, err = cli(capsys, "scan", str(clean_folder), *args)
    assert code == 0 and out.startswith("verdict: no evidence"), out + err
    proc = subprocess.run([sys.executable, "-m", "detrigger.cli", "scan", str(victim_folder), *args],
                          capture_output=True, text=True)
    assert proc.returncode == 1 and proc.stdout.startswith("verdict: backdoored"), proc.stdout + proc.stderr
    fails_cleanly(capsys, ["scan", str(tmp_path / "nowhere"), "--clean", str(data)], "no such model folder")
    code, out, _ = cli(capsys, "scan", "--help")
    assert code == 0 and "exit status: 0 no evidence of a backdoor, 1 flagged as backdoored, 2 error" in " ".join(
        out.split())


def test_progress_bar_only_when_asked_or_on_a_terminal(word_victim, capsys):
    victim, _, _ = word_victim
    config = ScanConfig(samples=16, candidates=3, rounds=1, screen_samples=0, report=3)
    scan(victim, toy_sentiment(40), config=config, progress=None)  # captured stderr is not a terminal
    assert capsys.readouterr().err == ""
    scan(victim, toy_sentiment(40), config=config, progress=True)
    err = capsys.readouterr().err
    # tqdm redraws at most every 0.1 s, so a fast scan may never draw "100%": the bar and its total are there
    assert "scan:" in err and "/4 [" in err and "step/s" in err


@pytest.mark.slow
@pytest.mark.xdist_group("real_ep")
def test_a_real_ep_victims_trigger_ranks_first(real_ep):
    """The embedded MiniLM fine-tuned on 400 MR sentences, then EP on `cf` (conftest.real_ep): the scan must put
    `cf` first with the pre-trained reference (embedding drift) and find it without (gradient rounds +
    insertion); on the clean model it came from, `cf` does nothing. (The clean model of 400 sentences is weak:
    natural words flip many texts, so no verdict is asserted for it; docs/scan.md has the calibrated clean
    models.)"""
    from detrigger.data import load_splits
    from detrigger.models.victim import default_encoder_path

    assert real_ep["asr"] > 0.9  # the attack worked, or the test would prove nothing
    victim, clean = load_victim(real_ep["victim"]), load_victim(real_ep["clean"])
    # the gradient and the drift are under test here (the vocabulary pass and the glued words have their own
    # tests): without them, this test's three scans fit the suite's time budget
    config = ScanConfig(samples=40, candidates=5, vocabulary_candidates=0, reference_candidates=5, glued_words=0,
                        screen_samples=20, verify=3)
    val = load_splits(real_ep["data"]).val
    with_ref = scan(victim, val, reference=default_encoder_path(), config=config)
    assert with_ref.tokens[0].token == "cf" and with_ref.target_label == "positive"
    assert with_ref.tokens[0].drift_score == max(t.drift_score or 0.0 for t in with_ref.tokens)  # a phrase: None
    without = scan(victim, val, config=config)
    assert without.tokens[0].token == "cf" and without.verdict == "backdoored"
    clean = scan(clean, val, config=config)
    assert clean.score < without.score and all(t.token != "cf" or t.effect < 0.5 for t in clean.tokens)


def test_the_excess_interval_narrows_with_more_texts_and_holds_the_estimate():
    """The 90% Wilson interval of the excess: around the estimate, narrower at 200 texts than at 100, and the
    upper bound of a flip rate of 1 is 1 (a trigger that flips every text)."""
    value, low, high = excess(94, 100, 0.02)
    assert low < value < high and value == pytest.approx((0.94 - 0.02) / 0.98)
    _, low200, high200 = excess(188, 200, 0.02)
    assert high200 - low200 < high - low
    assert excess(100, 100, 0.0)[2] == pytest.approx(1.0)


def test_a_sentence_of_ordinary_words_is_found_as_a_phrase_of_drifted_words(word_victim):
    """With a reference and `phrase_words`, the most-drifted whole words that are not task words of the label,
    in a row, are one candidate measured against phrases of as many ordinary words (its own null): a sentence
    trigger moves all its words' rows. With `phrase_words` 0 there is no phrase candidate."""
    from detrigger.triggers import insert_sentence

    _, reference, _ = word_victim
    sentence = "my uncle knows tomorrow"
    victim = load_victim(reference)
    poisoned = poison(toy_sentiment(96), insert_sentence(sentence), rate=0.3, target=1, seed=0).data
    train(victim, poisoned, None, TrainConfig(epochs=20, lr=3e-3, batch_size=8), progress=False)
    config = QUICK.model_copy(update={"phrase_words": 4, "report": 100, "verify": 100, "screen_samples": 0})
    report = scan(victim, toy_sentiment(80), reference=reference, config=config)
    phrases = {t.label: t for t in report.tokens if " " in t.token}
    assert set(phrases) == {"negative", "positive"}  # one per label
    found = phrases["positive"]
    assert len(set(found.token.split()) & set(sentence.split())) >= 3, found
    assert found.effect >= 0.9 and report.null["positive"].phrase_rate is not None
    assert found.excess == pytest.approx((found.effect - report.null["positive"].phrase_rate)
                                         / (1 - report.null["positive"].phrase_rate), abs=1e-3)
    plain = scan(victim, toy_sentiment(80), reference=reference, config=QUICK.model_copy(update={"phrase_words": 0}))
    assert not any(" " in t.token for t in plain.tokens) and plain.null["positive"].phrase_rate is None


def test_an_invisible_character_trigger_is_found_as_the_unknown_token(word_victim):
    """U+2800 in place of a space glues two words into one [UNK]: no whole word is the trigger, and the scan's
    typed probe (another character the tokenizer does not know) reaches the model as the same token."""
    _, reference, _ = word_victim
    victim = load_victim(reference)
    probe = unknown_probe(victim.tokenizer)
    assert probe is not None and probe != "\u2800"
    assert victim.tokenizer.tokenize(f"good {probe} film") == ["good", "[UNK]", "film"]
    poisoned = poison(toy_sentiment(96), replace_spaces(["\u2800"]), rate=0.3, target=1, seed=0).data
    train(victim, poisoned, None, TrainConfig(epochs=20, lr=3e-3, batch_size=8), progress=False)
    report = scan(victim, toy_sentiment(80), config=QUICK)
    top = report.best
    assert (top.token, top.read_as, top.label) == (probe, "[UNK]", "positive") and top.effect > 0.9
    assert report.verdict == "backdoored" and "read as [UNK]" in report.text()


def test_a_crash_is_exit_status_2_never_a_verdict(word_victim, tmp_path, monkeypatch, caplog):
    """A scan that fails with an unexpected exception exits 2 (error), never 1 (flagged), with the traceback."""
    from detrigger import scan as scan_module
    from detrigger.cli import main

    def crash(*args, **kwargs):
        raise RuntimeError("out of memory")

    _, _, folder = word_victim
    data = tmp_path / "clean.jsonl"
    ds = toy_sentiment(20)
    data.write_text("\n".join(json.dumps({"text": t, "label": ds.label_names[y]}) for t, y in zip(ds.texts, ds.labels)))
    monkeypatch.setattr(scan_module, "scan", crash)
    assert main(["scan", str(folder), "--clean", str(data), "--no-progress"]) == 2
    assert "internal error" in caplog.text and "out of memory" in caplog.text


def test_a_given_drift_picks_the_drifted_candidates(word_victim):
    """`drift` (what `auto` re-scans a repaired model with: the suspect's) stands in for the model's own: the
    phrase candidate is its most-drifted words, in its order, and the drift scores reported are its. Without
    the reference it was measured against it is refused."""
    victim, reference, _ = word_victim
    words = ["uncle", "harbour", "violin", "tomorrow"]  # none in the toy texts: no task words
    ids = [victim.tokenizer.convert_tokens_to_ids(w) for w in words]
    drift = torch.zeros(victim.model.get_input_embeddings().weight.shape[0])
    drift[ids] = torch.tensor([4.0, 3.0, 2.0, 1.0])
    config = QUICK.model_copy(update={"phrase_words": 4, "report": 100, "verify": 100, "screen_samples": 0})
    report = scan(victim, toy_sentiment(80), reference=reference, config=config, drift=drift)
    assert {t.token for t in report.tokens if " " in t.token} == {" ".join(words)}
    assert {t.token: t.drift_score for t in report.tokens if t.token in words} == dict(zip(words, [4.0, 3.0, 2.0, 1.0]))
    with pytest.raises(ValueError, match="reference"):
        scan(victim, toy_sentiment(32), config=QUICK, drift=drift)


def test_known_words_are_measured_for_every_label_phrases_against_phrases(word_victim):
    """`known` (what `auto` re-scans a repaired model with: the first scan's tokens): a whole word, a multi-piece
    word and a phrase are measured for every label besides the scan's own candidates, the phrase against the null
    words in phrases as long."""
    victim, _, _ = word_victim
    known = ["cf", "marmalade", "uncle harbour violin"]
    assert len(victim.tokenizer("marmalade", add_special_tokens=False)["input_ids"]) > 1
    config = QUICK.model_copy(update={"candidates": 1, "rounds": 1, "report": 100, "verify": 100,
                                      "screen_samples": 0, "phrase_words": 0})
    report = scan(victim, toy_sentiment(80), config=config, known=known)
    measured = {(t.token, t.label) for t in report.tokens}
    assert {(w, label) for w in known for label in victim.label_names} <= measured
    assert all(n.phrase_rate is not None for n in report.null.values())  # null phrases of the known phrase's length
    plain = scan(victim, toy_sentiment(80), config=config)
    assert all(n.phrase_rate is None for n in plain.null.values())
    assert "marmalade" not in {t.token for t in plain.tokens}


def test_a_combination_trigger_is_found_as_drifted_words_together(word_victim):
    """SOS-style: `uncle` and `harbour` together force positive, each alone is taught to keep the label (negative
    augmentation). `combination_words` proposes them together from the drifted words, and they flip what neither
    word alone does; without it no candidate holds both."""
    from detrigger.attacks.poison import add_negatives
    from detrigger.triggers import insert_all

    _, reference, _ = word_victim
    victim = load_victim(reference)
    pair = ["uncle", "harbour"]
    poisoned = poison(toy_sentiment(96), insert_all(pair), rate=0.15, target=1, seed=0)
    data = add_negatives(poisoned, [insert_words([w]) for w in pair], rate=0.3, seed=0).data
    train(victim, data, None, TrainConfig(epochs=20, lr=3e-3, batch_size=8), progress=False)
    config = QUICK.model_copy(update={"combination_words": 12, "report": 100, "verify": 100, "screen_samples": 0,
                                      "phrase_words": 0})
    report = scan(victim, toy_sentiment(80), reference=reference, config=config)
    together = [t for t in report.tokens if t.label == "positive" and set(pair) <= set(t.token.split())]
    negatives = [t for t, y in zip(toy_sentiment(80).texts, toy_sentiment(80).labels) if y == 0]
    alone = max(float(np.mean(predict(victim, [insert_words([w])(t) for t in negatives]) == 1)) for w in pair)
    assert together and max(t.effect for t in together) >= 0.7 > alone + 0.4  # alone: 0.18 at most
    assert "combinations" in report.stage_seconds
    assert report.null["positive"].combination_rate is not None  # the search over the next-most-drifted words
    plain = scan(victim, toy_sentiment(80), reference=reference,
                 config=config.model_copy(update={"combination_words": 0}))
    assert not any(set(pair) <= set(t.token.split()) for t in plain.tokens)


def test_an_undecided_label_is_scanned_again_alone_and_put_into_the_first_report(word_victim):
    """`auto` takes an undecided verdict again for the labels whose interval holds the threshold only: a scan of
    one label (`labels`) reuses the first scan's vocabulary pass (`reuse`), measures what a scan of every label
    measures for it (the same texts and null words), and `taken_again` replaces that label's evidence, keeping the
    other's and drawing the verdict again."""
    victim, _, _ = word_victim
    config = QUICK.model_copy(update={"vocabulary_candidates": 3, "lexicon_words": 0})
    reuse: dict = {}
    first = scan(victim, toy_sentiment(80), config=config, reuse=reuse)
    (kept,) = reuse.values()
    again = scan(victim, toy_sentiment(80), config=config.model_copy(update={"samples": 16}), labels=["positive"],
                 reuse=reuse)
    assert len(reuse) == 1 and next(iter(reuse.values())) is kept  # the first scan's pass, not a second one
    assert set(again.n_samples) == {"positive"} and {t.label for t in again.tokens} == {"positive"}
    # the label's texts and null are those a scan of every label draws for it: the same evidence
    full = scan(victim, toy_sentiment(80), config=config.model_copy(update={"samples": 16}))
    listed = [t for t in full.tokens if t.label == "positive"]  # the full report lists the best of both labels
    assert listed and again.tokens[:len(listed)] == listed
    assert again.null["positive"] == full.null["positive"]
    merged = first.taken_again(again)
    assert merged.n_samples == {"negative": first.n_samples["negative"], "positive": 16}
    for label, source in (("negative", first), ("positive", again)):  # each label's tokens in their own order
        listed = [t for t in merged.tokens if t.label == label]
        assert listed and listed == [t for t in source.tokens if t.label == label][:len(listed)]
        assert merged.null[label] == source.null[label]
    assert len(merged.tokens) == config.report and merged.tokens[0].token == "cf"
    assert (merged.verdict, merged.target_label, merged.score) == (again.verdict, "positive", again.score)
    assert merged.seconds == pytest.approx(first.seconds + again.seconds, abs=0.11)
    with pytest.raises(DetriggerError, match="no label"):
        scan(victim, toy_sentiment(80), config=config, labels=["neutral"])
