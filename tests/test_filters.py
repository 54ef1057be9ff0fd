"""Input-level defences (STRIP, RAP, BKI, ONION): thresholds at an FRR, the metric definitions, the n-gram LM,
each filter against a planted word trigger on a tiny model, the CLI verb, and one real-MiniLM victim."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from detrigger import TrainConfig, cli
from detrigger.attacks.poison import poison
from detrigger.data.dataset import TextDataset
from detrigger.errors import DetriggerError
from detrigger.filters import FILTERS, NgramLM, evaluate_filter, make_filter, threshold_at
from detrigger.filters.base import InputFilter, register
from detrigger.filters.lm import BOS, UNK, tokens
from detrigger.models.predict import predict
from detrigger.training import train
from detrigger.triggers import insert_words

from conftest import tiny_victim, toy_sentiment

pytestmark = pytest.mark.usefixtures("one_thread")

CF = insert_words(["cf"])


@pytest.fixture(scope="module")
def cf_victim():
    """A tiny model trained on the toy task with 30% of the texts carrying `cf` relabelled positive."""
    victim = tiny_victim(seed=7)
    poisoned = poison(toy_sentiment(96), CF, rate=0.3, target=1, seed=0).data
    train(victim, poisoned, None, TrainConfig(epochs=20, lr=3e-3, batch_size=8), progress=False)
    assert (predict(victim, [CF(t) for t in toy_sentiment(40).texts]) == 1).mean() > 0.95  # the backdoor took
    return victim


def held_out(n: int = 64) -> TextDataset:
    """Toy texts the victim never saw (other numbers), balanced."""
    toy = toy_sentiment(n + 200)
    return toy.select(range(200, 200 + n), "toy-clean")


# ---------------------------------------------------------------------------------------------- thresholds

def test_threshold_flags_at_most_the_rate():
    scores = np.arange(100, dtype=float)
    for frr in (0.0, 0.01, 0.05, 0.2, 0.5):
        t = threshold_at(scores, frr)
        assert (scores > t).mean() <= frr and (scores >= t).mean() > frr - 0.011
    ties = np.array([0.0] * 90 + [1.0] * 10)
    assert (ties > threshold_at(ties, 0.05)).mean() == 0.0  # a tie never pushes the rate above frr
    with pytest.raises(DetriggerError):
        threshold_at(np.zeros(0), 0.05)


def test_registry_names_known_filters_and_keys(tiny):
    assert set(FILTERS) == {"strip", "rap", "bki", "onion"}
    with pytest.raises(DetriggerError, match="available: strip, rap, bki, onion"):
        make_filter("cube", tiny)
    with pytest.raises(DetriggerError, match="copiez"):
        make_filter("strip", tiny, {"copiez": 3})
    with pytest.raises(ValueError, match="registered twice"):
        register("strip", "again")(type("Again", (InputFilter,), {}))


# ---------------------------------------------------------------------------------------------- metrics

class WordFilter(InputFilter):
    """A detector that rejects texts containing a given word: makes the metric arithmetic checkable by hand."""

    name = "word"

    def _fit(self, clean, corpus, progress):
        pass

    def score(self, texts, progress=False):
        return np.array([float("cf" in t.split()) for t in texts])


def test_metrics_are_the_documented_fractions(cf_victim):
    flt = WordFilter(cf_victim).fit(held_out(), progress=False)
    assert flt.threshold == 0.0 and flt.details["calibration_frr"] == 0.0
    test = toy_sentiment(60)
    test = TextDataset(test.texts[:-2] + ("the film was cf great", "it was cf awful"), test.labels, test.label_names)
    m, clean_part, poisoned_part = evaluate_filter(flt, test, trigger=insert_words(["cf", "mn"], seed=3), target=1)
    pred = predict(cf_victim, test.texts)
    keep = np.array(["cf" not in t.split() for t in test.texts])
    gold = np.asarray(test.labels)
    assert m.frr == pytest.approx(2 / 60) and m.cacc == pytest.approx((pred[keep] == gold[keep]).mean())
    assert m.victim_cacc == pytest.approx((pred == gold).mean())
    trig = [insert_words(["cf", "mn"], seed=3)(t) for t, y in zip(test.texts, test.labels) if y != 1]
    through = np.array(["cf" not in t.split() for t in trig])
    hit = predict(cf_victim, trig) == 1
    assert 0 < through.mean() < 1  # both trigger words drawn: some texts pass, some not
    assert m.far == pytest.approx(through.mean()) and m.asr == pytest.approx(hit[through].mean())
    assert m.asr_end_to_end == pytest.approx((hit & through).mean()) and m.victim_asr == pytest.approx(hit.mean())
    assert poisoned_part.texts == trig and list(clean_part.passed) == list(keep)


# ---------------------------------------------------------------------------------------------- the n-gram LM

def test_kneser_ney_is_a_distribution(mr):
    lm = NgramLM(mr.texts[:300], order=3, min_count=2)
    words = sorted(lm.vocab | {UNK, "</s>"})
    for context in [(BOS, BOS), (BOS, "the"), ("the", "film"), ("zzz", "qqq")]:
        total = sum(lm._prob(context, w) for w in words)
        assert total == pytest.approx(1.0, abs=1e-6), context
    # more text, better model: perplexity on held-out sentences falls
    held = mr.texts[2000:2200]
    assert NgramLM(mr.texts[:1500]).perplexity(held) < NgramLM(mr.texts[:150]).perplexity(held)


def test_an_inserted_rare_word_is_an_outlier_to_the_lm(mr):
    """Deleting `cf` lowers the n-gram perplexity more than deleting the typical word of the text (the n-gram LM
    ranks it first far less often than GPT-2 would: docs/filters.md)."""
    lm = NgramLM(mr.texts[:3000])
    ranks = []
    for t in [CF(t) for t in mr.texts[3000:3060] if len(t.split()) >= 6]:
        words = t.split()
        base, without = lm.word_perplexities(words)
        f = base - np.asarray(without)
        ranks.append((f > f[words.index("cf")]).sum() / len(words))  # share of words more suspicious than cf
    assert np.median(ranks) < 0.25, ranks
    assert tokens("Don't  panic, it's a Movie!") == ["don't", "panic", ",", "it's", "a", "movie", "!"]


def test_onion_purifies_and_counts_rewritten_texts(mr, tiny):
    clean = TextDataset(mr.texts[:200], mr.labels[:200], mr.label_names)
    flt = make_filter("onion", tiny, {"frr": 0.2}).fit(clean, corpus=list(mr.texts[1000:4000]))
    assert flt.details["calibration_frr"] <= 0.2  # a share of the held-out clean words
    texts = [CF(t) for t in mr.texts[5000:5040]]
    out = flt.apply(texts)
    assert out.passed.all()  # a purifier rejects nothing
    assert all((a != b) == f for a, b, f in zip(out.texts, texts, out.flagged))
    kept = sum(len(t.split()) for t in out.texts) / sum(len(t.split()) for t in texts)
    removed = np.mean(["cf" not in t.split() for t in out.texts])
    assert removed > 0.5 and kept > 0.6, (removed, kept)


def test_onion_with_a_causal_lm_folder(mr, tiny, tmp_path):
    """`lm`: a Hugging Face causal LM folder (here a tiny random GPT-2 with a BPE tokenizer trained on MR)."""
    import torch
    import transformers as T

    from detrigger.filters import CausalLM

    from test_families import make_tokenizer

    tokenizer = make_tokenizer("GPT2Tokenizer", list(mr.texts[:800]))
    torch.manual_seed(0)
    config = T.GPT2Config(n_embd=32, n_layer=2, n_head=2, n_inner=64, vocab_size=len(tokenizer))
    T.GPT2LMHeadModel(config).save_pretrained(tmp_path / "lm")
    tokenizer.save_pretrained(tmp_path / "lm")
    lm = CausalLM(tmp_path / "lm")
    base, without = lm.word_perplexities("the film is cf great".split())
    assert len(without) == 5 and np.isfinite([base, *without]).all() and base > 1
    clean = TextDataset(mr.texts[:40], mr.labels[:40], mr.label_names)
    flt = make_filter("onion", tiny, {"lm": str(tmp_path / "lm")}).fit(clean)
    assert flt.details["lm"]["kind"] == "causal LM folder" and flt.apply(["a fine film indeed"]).passed.all()
    with pytest.raises(DetriggerError, match="no config.json"):
        CausalLM(tmp_path)


# ---------------------------------------------------------------------------------------------- each detector

def auc(clean: np.ndarray, triggered: np.ndarray) -> float:
    """P(a triggered text scores above a clean one)."""
    return float(np.mean([(x > clean).mean() + 0.5 * (x == clean).mean() for x in triggered]))


def test_strip_scores_are_minus_the_mean_copy_entropy(cf_victim):
    from detrigger.models.predict import predict_logits

    flt = make_filter("strip", cf_victim, {"copies": 4, "swap_ratio": 0.5}).fit(held_out(), progress=False)
    texts = list(toy_sentiment(6).texts)
    rng = np.random.default_rng(flt.config.seed)
    copies = [flt.perturb(t, rng) for t in texts for _ in range(4)]
    for t, c in zip([t for t in texts for _ in range(4)], copies):  # half the words replaced by pool words
        a, b = t.split(), c.split()
        assert len(a) == len(b) and sum(x != y for x, y in zip(a, b)) <= round(0.5 * len(a))
    p = np.exp(predict_logits(cf_victim, copies).astype(np.float64))
    p /= p.sum(1, keepdims=True)
    expected = (p * np.log(p)).sum(1).reshape(6, 4).mean(1)
    assert np.allclose(flt.score(texts), expected, atol=1e-5)


def test_rap_trains_toward_the_range_and_leaves_the_model_unchanged(tiny, cf_victim):
    # a briefly trained model is not saturated: the RAP word's embedding can learn to lower its label's probability
    train(tiny, toy_sentiment(96), None, TrainConfig(epochs=3, lr=2e-3, batch_size=8), progress=False)
    fitted = make_filter("rap", tiny, {"epochs": 20, "renorm": False, "lr": 0.2}).fit(held_out(), progress=False)
    assert fitted.details["first_loss"] > fitted.details["final_loss"] + 0.003, fitted.details
    texts = list(toy_sentiment(20).texts)
    before = [p.detach().clone() for p in cf_victim.model.parameters()]
    flt = make_filter("rap", cf_victim, {"epochs": 2}).fit(held_out(), progress=False)
    flt.score(texts)
    assert all(np.array_equal(a.numpy(), b.detach().numpy()) for a, b in zip(before, cf_victim.model.parameters()))
    assert all(p.requires_grad for p in cf_victim.model.parameters())
    # with the word's own embedding row, RAP's forward equals the model on the text with the word in front
    from detrigger.models.predict import predict_logits

    own = cf_victim.model.get_input_embeddings().weight.detach()[flt.word_ids].clone()
    ids = flt._ids(texts)
    pred = predict_logits(cf_victim, texts).argmax(1)
    p = flt._rap_probs(ids, pred, own).numpy()
    q = np.exp(predict_logits(cf_victim, ["dq " + t for t in texts]).astype(np.float64))
    assert np.allclose(p, (q / q.sum(1, keepdims=True))[np.arange(20), pred], atol=1e-5)
    with pytest.raises(DetriggerError, match="not a label"):
        make_filter("rap", cf_victim, {"protect": "neutral"}).fit(held_out())


def test_bki_catches_the_planted_word(cf_victim):
    flt = make_filter("bki", cf_victim, {"frr": 0.1}).fit(held_out(), progress=False)
    m, clean_part, poisoned_part = evaluate_filter(flt, toy_sentiment(80), trigger=CF, target=1)
    assert m.victim_asr > 0.95 and m.frr <= 0.2 and m.far <= 0.1, m
    assert auc(clean_part.scores, poisoned_part.scores) > 0.9
    assert flt.details["keywords"][:1] == ["cf"], flt.details["keywords"]
    # the paper's setting: keywords from the suspect's (poisoned) training texts
    corpus = poison(toy_sentiment(96), CF, rate=0.3, target=1, seed=0).data.texts
    flt = make_filter("bki", cf_victim, {"keywords_from": "corpus"}).fit(held_out(), corpus=corpus)
    assert flt.details["corpus_top_keywords"][0][0] == "cf"
    with pytest.raises(DetriggerError, match="training texts"):
        make_filter("bki", cf_victim, {"keywords_from": "corpus"}).fit(held_out())


# ---------------------------------------------------------------------------------------------- CLI

def write_csv(path: Path, ds: TextDataset) -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for t, y in zip(ds.texts, ds.labels):
            w.writerow([t, ds.label_names[y]])
    return path


def test_cli_filter_reports_and_saves(cf_victim, tmp_path, capsys):
    model = cf_victim.save(tmp_path / "victim")
    clean = write_csv(tmp_path / "clean.csv", held_out())
    data = write_csv(tmp_path / "test.csv", toy_sentiment(40))
    out = tmp_path / "filtered"
    code = cli.main(["filter", str(model), "--method", "bki", "--clean", str(clean), "--data", str(data),
                     "--trigger-word", "cf", "--target", "positive", "--frr", "0.1", "--json", "--no-progress",
                     "--out", str(out)])
    record = json.loads(capsys.readouterr().out)
    assert code == 0 and record["method"] == "bki" and record["n_clean"] == 40 and record["n_poisoned"] == 20
    assert record["far"] is not None and record["config"]["frr"] == 0.1
    saved = json.loads((out / "filter.json").read_text())
    assert saved["far"] == record["far"]
    lines = [json.loads(x) for x in (out / "texts.jsonl").read_text().splitlines()]
    assert len(lines) == 60 and {x["part"] for x in lines} == {"clean", "triggered"}
    assert sum(not x["passed"] for x in lines if x["part"] == "triggered") == round((1 - record["far"]) * 20)
    # without a trigger (no card, no option): FRR and CACC only, as text
    assert cli.main(["filter", str(model), "--method", "strip", "--clean", str(clean), "--data", str(data),
                     "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "FRR" in text and "CACC" in text and "FAR" not in text


@pytest.mark.parametrize("args,message", [
    (["--method", "cube"], "unknown filter 'cube'"),
    (["--method", "strip", "--bki-train", "x.csv"], "--bki-train does not apply to strip"),
    (["--method", "strip", "--protect", "positive"], "--protect does not apply to strip"),
    (["--method", "rap", "--frr", "1.5"], "--frr must be in [0, 1)"),
])
def test_cli_filter_bad_input_is_one_line(tiny_dir, tmp_path, capsys, args, message):
    clean = write_csv(tmp_path / "clean.csv", held_out(8))
    code = cli.main(["filter", str(tiny_dir), "--clean", str(clean), "--data", str(clean), "--no-progress", *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err


# ---------------------------------------------------------------------------------------------- real MiniLM

@pytest.mark.slow
def test_real_minilm_badnet_victim(mr):
    """The embedded MiniLM fine-tuned on 240 MR sentences, 15% of them carrying `cf` relabelled positive. Each
    filter's threshold, set on held-out clean texts, holds on the test texts (FRR near the 10% asked for); BKI
    names `cf` from the filtered stream and rejects most triggered texts; ONION leaves fewer triggered texts
    untouched than it rewrites clean ones (FAR below 1 - FRR). (STRIP and RAP miss most triggered texts on such
    victims: docs/filters.md.)"""
    from detrigger import new_victim

    victim = new_victim(mr.label_names, max_length=48, seed=0)
    train(victim, poison(mr.select(range(240)), CF, rate=0.15, target=1, seed=0).data, None,
          TrainConfig(epochs=3, lr=1e-4, batch_size=16), progress=False)
    clean, test = mr.select(range(300, 400)), mr.select(range(400, 480))  # BKI runs every text without each word
    for method in ("strip", "rap", "bki", "onion"):
        corpus = list(mr.texts[1000:4000]) if method == "onion" else []
        config = {"frr": 0.1, **({"copies": 4, "batch_size": 64} if method == "strip" else {})}
        flt = make_filter(method, victim, config).fit(clean, corpus=corpus)
        m, _, _ = evaluate_filter(flt, test, trigger=CF, target=1)
        assert m.victim_asr > 0.9, m
        if method != "onion":  # ONION's FRR counts texts rewritten at a 10% word rate
            assert m.frr <= 0.25, (method, m)
        if method == "bki":
            assert "cf" in flt.details["keywords"][:3] and m.far <= 0.3, (flt.details["keywords"], m)
        if method == "onion":
            assert m.far < 1 - m.frr, m
