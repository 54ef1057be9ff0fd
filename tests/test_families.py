"""Every classifier family of docs/models.md, end to end on a tiny random model of it (2 layers, hidden 32, a
small tokenizer of the family's kind trained on MR): load, eval, the BadNet and EP attacks, every defence,
the scan, and the plain-transformers round trip of the saved folders. Each family's pre-trained 'encoder'
is a random base model saved as an ordinary transformers folder, as a user's download would be."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers as T
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

from detrigger import TrainConfig, load_victim, new_victim
from detrigger.attacks import AttackSpec, build_victim
from detrigger.batching import encode, token_ids
from detrigger.data import DataSpec
from detrigger.defences import DEFENCES, repair
from detrigger.errors import DetriggerError
from detrigger.evaluation.metrics import evaluate
from detrigger.lexicon import common_words
from detrigger.models.arch import (
    attention_dropout_off,
    eager_attention,
    embedding_key,
    family,
    ffn_down_projections,
    ffn_width,
)
from detrigger.models.predict import predict_logits
from detrigger.scan import ScanConfig, gradient_ranking, scan, unknown_probe

pytestmark = pytest.mark.usefixtures("one_thread")

QUICK = TrainConfig(epochs=1, lr=1e-3, batch_size=16)
# without the common words: a tokenizer trained on 100 sentences cuts nearly all of them, a second vocabulary pass
# per scan (tests/test_scan.py has the common words' own test)
SCAN = ScanConfig(samples=10, candidates=3, rounds=1, screen_samples=0, verify=3, report=5, lexicon_words=0)
SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
# family -> (tokenizer kind, config); vocab_size and pad_token_id are set from the tokenizer
FAMILIES = {
    "bert": ("BertTokenizer", lambda: T.BertConfig(**SMALL)),
    "roberta": ("RobertaTokenizer", lambda: T.RobertaConfig(**SMALL, bos_token_id=0, eos_token_id=2)),
    "xlm-roberta": ("XLMRobertaTokenizer", lambda: T.XLMRobertaConfig(**SMALL, bos_token_id=2, eos_token_id=3)),
    "distilbert": ("DistilBertTokenizer", lambda: T.DistilBertConfig(dim=32, n_layers=2, n_heads=2, hidden_dim=64)),
    "albert": ("AlbertTokenizer", lambda: T.AlbertConfig(**SMALL, embedding_size=16)),
    "electra": ("BertTokenizer", lambda: T.ElectraConfig(**SMALL, embedding_size=16)),
    "deberta-v2": ("DebertaV2Tokenizer", lambda: T.DebertaV2Config(**SMALL, relative_attention=True,
                                                                   pos_att_type=["p2c", "c2p"])),
    "modernbert": ("BertTokenizer", lambda: T.ModernBertConfig(**SMALL, cls_token_id=2, sep_token_id=3,
                                                               bos_token_id=2, eos_token_id=3)),
    # decoders: GPT-2's tokenizer has no pad token (detrigger pads with end-of-text and writes it into the config)
    "gpt2": ("GPT2Tokenizer", lambda: T.GPT2Config(n_embd=32, n_layer=2, n_head=2, n_inner=64, bos_token_id=5,
                                                   eos_token_id=5)),
    "qwen2": ("Qwen2Tokenizer", lambda: T.Qwen2Config(**SMALL, num_key_value_heads=1, bos_token_id=5,
                                                      eos_token_id=5)),
    "llama": ("LlamaTokenizer", lambda: T.LlamaConfig(**SMALL, num_key_value_heads=1, bos_token_id=2,
                                                      eos_token_id=3)),
}
SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>", "<|endoftext|>"]
WORDPIECE_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
UNIGRAM_SPECIALS = ["<pad>", "<unk>", "<s>", "</s>", "<mask>", "[CLS]", "[SEP]", "[PAD]", "[UNK]", "[MASK]"]


@pytest.fixture(scope="module")
def corpus(mr) -> list[str]:
    """Tokenizer training text: MR sentences and the trigger words, so they become tokens of their own."""
    return list(mr.texts[:800]) + ["cf mn bb tq mb"] * 50


_TOKENIZERS: dict[tuple[str, int], T.PreTrainedTokenizerBase] = {}


def make_tokenizer(kind: str, corpus: list[str], size: int = 900):
    """A real tokenizer of the family's kind (WordPiece, byte-level BPE, Unigram, Metaspace BPE), trained here
    once per kind and size."""
    if (kind, size) not in _TOKENIZERS:
        _TOKENIZERS[kind, size] = _train_tokenizer(kind, corpus, size)
    return _TOKENIZERS[kind, size]


def _train_tokenizer(kind: str, corpus: list[str], size: int):
    if kind in ("BertTokenizer", "DistilBertTokenizer"):
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(lowercase=True)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.train_from_iterator(corpus, trainers.WordPieceTrainer(vocab_size=size, special_tokens=WORDPIECE_SPECIALS,
                                                                  show_progress=False))
        return getattr(T, kind)(vocab=tok.get_vocab())
    if kind in ("XLMRobertaTokenizer", "AlbertTokenizer", "DebertaV2Tokenizer"):
        tok = Tokenizer(models.Unigram())
        tok.normalizer = normalizers.Lowercase()
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.train_from_iterator(corpus, trainers.UnigramTrainer(vocab_size=size, special_tokens=UNIGRAM_SPECIALS,
                                                                unk_token="<unk>", show_progress=False))
        return getattr(T, kind)(vocab=[tuple(x) for x in json.loads(tok.to_str())["model"]["vocab"]])
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = (pre_tokenizers.Metaspace() if kind == "LlamaTokenizer"
                         else pre_tokenizers.ByteLevel(add_prefix_space=False))
    alphabet = [] if kind == "LlamaTokenizer" else pre_tokenizers.ByteLevel.alphabet()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=size, special_tokens=SPECIALS, show_progress=False,
                                                        initial_alphabet=alphabet))
    model = json.loads(tok.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    return getattr(T, kind)(vocab=model["vocab"], merges=merges)


def make_encoder(name: str, corpus: list[str], folder: Path) -> Path:
    """A family's random 'pre-trained' base model and its tokenizer, saved as a plain transformers folder."""
    kind, make_config = FAMILIES[name]
    tokenizer = make_tokenizer(kind, corpus)
    config = make_config()
    config.vocab_size = len(tokenizer)
    config.pad_token_id = tokenizer.pad_token_id  # None for GPT-2 and Llama: their tokenizers have no pad token
    if hasattr(config, "max_position_embeddings"):
        config.max_position_embeddings = 80  # MBTSAD's teacher reads 2 x max_length (+2 for RoBERTa)
    torch.manual_seed(0)
    T.AutoModel.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def write_csv(path: Path, texts, labels, names) -> Path:
    import csv

    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows((t, names[y]) for t, y in zip(texts, labels))
    return path


def plain_logits(folder: Path, texts: list[str]) -> np.ndarray:
    """AutoTokenizer + AutoModelForSequenceClassification alone, a padded batch."""
    tokenizer = T.AutoTokenizer.from_pretrained(folder)
    model = T.AutoModelForSequenceClassification.from_pretrained(folder).eval()
    with torch.no_grad():
        return model(**tokenizer(texts, padding=True, truncation=True, return_tensors="pt")).logits.numpy()


def tiny_config(method: str) -> dict:
    """One epoch and one grid point for whichever of these options the defence has."""
    fields = DEFENCES[method].config.model_fields
    quick = {"train": QUICK, "teacher_train": QUICK, "rho_grid": (0.5,), "ratios": (0.2,), "top_n": 5, "max_rounds": 1,
             "scan": SCAN}
    return {k: v for k, v in quick.items() if k in fields}


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_every_family_end_to_end(name, corpus, mr, tmp_path):
    encoder = make_encoder(name, corpus, tmp_path / "encoder")
    data = write_csv(tmp_path / "mr.csv", mr.texts[2000:2100], mr.labels[2000:2100], mr.label_names)
    spec = DataSpec(source=str(data), val=0.2, test=0.2)
    # attack: BadNet from the encoder; EP on the clean model (its embedding rows, found by get_input_embeddings)
    badnet = build_victim(spec, AttackSpec(attack="badnet", train=QUICK), clean_config=QUICK, encoder=encoder,
                          max_length=32, cache=False, progress=False)
    ep = build_victim(spec, AttackSpec(attack="ep", setting="clean"), clean_config=QUICK, encoder=encoder,
                      max_length=32, cache=False, progress=False)
    key = embedding_key(ep.victim.model)
    moved = [k for k, v in ep.victim.model.base_model.state_dict().items()
             if not torch.equal(v, ep.clean.model.base_model.state_dict()[k])]
    assert moved == [key] and 0 <= ep.metrics.asr <= 1
    # load + eval: the saved victim reads the same as the one in memory, and as plain transformers reads it
    suspect_dir = badnet.victim.save(tmp_path / "suspect")
    victim = load_victim(suspect_dir)
    assert family(victim.model) == name and victim.tokenizer.pad_token_id == victim.model.config.pad_token_id
    texts = list(mr.texts[-12:]) + [" ".join(mr.texts[-30:-20])]  # one longer than max_length
    ours = predict_logits(victim, texts)
    np.testing.assert_allclose(ours, predict_logits(badnet.victim, texts), atol=1e-5)
    np.testing.assert_allclose(ours, plain_logits(suspect_dir, texts), atol=1e-5)
    metrics = evaluate(victim, mr.select(range(40)))
    assert 0 <= metrics.cacc <= 1
    # scan, with the encoder as the reference (embedding drift)
    report = scan(victim, mr.select(range(60)), reference=encoder, config=SCAN)
    assert report.verdict in ("backdoored", "no evidence") and report.tokens
    # every defence and a pipeline, each saved and read back by plain transformers
    clean = mr.select(range(100, 160))
    for method in [*sorted(DEFENCES), "epur+finemixing"]:
        steps = method.split("+")
        config = tiny_config(method) if len(steps) == 1 else {s: tiny_config(s) for s in steps}
        result = repair(victim, clean, method=method, reference=encoder, config=config)
        folder = tmp_path / f"repaired-{method}"
        result.save(folder)
        assert family(result.victim.model) == name and 0 <= result.report.accuracy_after <= 1, method
        np.testing.assert_allclose(plain_logits(folder, texts), predict_logits(load_victim(folder), texts), atol=1e-5,
                                   err_msg=method)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_family_parts_are_found(name, corpus, tmp_path):
    """The parts the defences use: FFN neurons (cut off exactly), attention dropout off, attention maps."""
    kind, make_config = FAMILIES[name]
    tokenizer = make_tokenizer(kind, corpus)
    config = make_config()
    config.vocab_size, config.pad_token_id = len(tokenizer), tokenizer.pad_token_id
    for key in ("attention_probs_dropout_prob", "attention_dropout", "attn_pdrop"):
        if hasattr(config, key):
            setattr(config, key, 0.5)
    torch.manual_seed(0)
    model = T.AutoModelForSequenceClassification.from_config(config)
    downs = ffn_down_projections(model, "finepruning")
    assert len(downs) == (1 if name == "albert" else 2) and all(ffn_width(d) == 64 for d in downs)
    attention_dropout_off(model)
    eager_attention(model, "nad")
    model.train()
    ids = torch.as_tensor([tokenizer("a dull and far too long film")["input_ids"]])
    maps = model(input_ids=ids, output_attentions=True).attentions
    assert len(maps) == 2  # rows still sum to one in train mode: no dropout on the probabilities
    assert all(torch.allclose(m.sum(-1), torch.ones(()), atol=1e-5) for m in maps)


def test_the_unknown_token_probe_per_tokenizer_kind(corpus):
    """WordPiece and Unigram tokenizers read a character they do not know as their unknown token, which the scan
    then tests as a candidate; a byte-level BPE spells it in bytes and the Metaspace BPE here drops it: no probe."""
    found = {}
    for name, (kind, _) in FAMILIES.items():
        tokenizer = make_tokenizer(kind, corpus)
        found[name] = probe = unknown_probe(tokenizer)
        if probe is not None:
            assert tokenizer(f"a {probe} a", add_special_tokens=False)["input_ids"].count(tokenizer.unk_token_id) == 1
    assert all(found[n] for n in ("bert", "distilbert", "electra", "modernbert", "albert", "deberta-v2"))
    assert not any(found[n] for n in ("roberta", "gpt2", "qwen2", "llama"))  # bytes; Metaspace BPE deletes it


def test_token_ids_are_what_the_tokenizers_own_call_gives(corpus, mr):
    """`batching.token_ids` calls a fast tokenizer's backend directly (the scan types 50,000 words): for every
    tokenizer kind, with and without special tokens, and `encode`'s truncation, the ids are the tokenizer's own."""
    texts = [*mr.texts[1000:1100], "", "héllo wörld \u2603 \u2800 日本語", "a " * 100, "cf [CLS] <s> </s> [MASK]",
             *common_words(500)]
    for name, (kind, _) in FAMILIES.items():
        tokenizer = make_tokenizer(kind, corpus)
        for special in (True, False):
            assert token_ids(tokenizer, texts, special) == tokenizer(texts, add_special_tokens=special)["input_ids"]
        assert encode(tokenizer, texts, 24) == tokenizer(texts, truncation=True, max_length=24)["input_ids"], name


def test_a_reference_of_another_family_is_refused(corpus, mr, tmp_path):
    """E-PUR, Fine-mixing and Retrain need the suspect's own base model: another family's is one clear error."""
    victim = load_victim(build_victim(
        DataSpec(source=str(write_csv(tmp_path / "mr.csv", mr.texts[:60], mr.labels[:60], mr.label_names))),
        AttackSpec(attack="badnet", train=QUICK), clean_config=QUICK, encoder=make_encoder("roberta", corpus,
                                                                                          tmp_path / "roberta"),
        max_length=32, cache=False, progress=False).victim.save(tmp_path / "suspect"))
    bert = make_encoder("bert", corpus, tmp_path / "bert")
    for method in ("epur", "finemixing", "retrain"):
        with pytest.raises(DetriggerError, match=rf"^{method}: the reference .* is a bert model .* the suspect a "
                                                 r"roberta model .* --reference"):
            repair(victim, mr.select(range(40)), method=method, reference=bert, config=tiny_config(method))
    with pytest.raises(DetriggerError, match="^epur: the reference .*embedded|^epur: the reference"):
        repair(victim, mr.select(range(40)), method="epur", config=tiny_config("epur"))  # the embedded MiniLM


def test_another_checkpoint_of_the_same_shape_is_refused(corpus, mr, tmp_path):
    """A reference of the suspect's family and vocabulary that is not its base (another random BERT, as
    paraphrase-MiniLM-L3-v2 is to an all-MiniLM-L6-v2 suspect: docs/models.md) is refused by every method that
    reads it; `auto` repairs without it and says why. Its own base, after fine-tuning, is accepted."""
    base = make_encoder("bert", corpus, tmp_path / "base")
    victim = build_victim(DataSpec(source=str(write_csv(tmp_path / "mr.csv", mr.texts[:60], mr.labels[:60],
                                                        mr.label_names))),
                          AttackSpec(attack="badnet", train=QUICK), clean_config=QUICK, encoder=base, max_length=32,
                          cache=False, progress=False).victim
    other = tmp_path / "other"
    T.AutoModel.from_config(T.AutoConfig.from_pretrained(base)).save_pretrained(other)  # same shape, new weights
    T.AutoTokenizer.from_pretrained(base).save_pretrained(other)
    clean = mr.select(range(40))
    for method in ("epur", "finemixing", "mixing", "retrain"):
        with pytest.raises(DetriggerError, match=rf"^{method}: the reference .* is not the suspect's base model: "
                                                 r"its weight matrices are uncorrelated .* --reference"):
            repair(victim, clean, method=method, reference=other, config=tiny_config(method))
        repair(victim, clean, method=method, reference=base, config=tiny_config(method))  # its own base: fine
    with pytest.raises(DetriggerError, match="^scan: the reference .* is not the suspect's base model"):
        scan(victim, clean, reference=other, config=SCAN)
    details = repair(victim, clean, method="auto", reference=other, config=tiny_config("auto")).report.details["auto"]
    assert details.reference_dropped and "uncorrelated" in details.reference_mismatch
    assert details.scan_before["reference"] is None


@pytest.mark.parametrize("name", ["gpt2", "qwen2"])
def test_a_decoders_scan_gradient_does_not_depend_on_padding(name, corpus, mr, tmp_path):
    """A decoder classifier pools its last real token, found from the token ids: the scan's gradient of a
    right-padded batch is the sum of each text's alone."""
    victim = new_victim(mr.label_names, encoder=make_encoder(name, corpus, tmp_path / "encoder"), max_length=32)
    texts = list(mr.texts[:8])
    assert len({len(victim.tokenizer(t)["input_ids"]) for t in texts}) > 1
    batched = gradient_ranking(victim, texts, 1, seed=0, batch_size=8)
    torch.testing.assert_close(batched, gradient_ranking(victim, texts, 1, seed=0, batch_size=1), rtol=1e-4, atol=1e-6)
