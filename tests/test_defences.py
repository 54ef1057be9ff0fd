"""Defences: the repair verb, exact mixing, E-PUR's ranking, and that nothing reads the attack."""

from __future__ import annotations

import inspect
import json

import pytest
import torch

from detrigger import DetriggerError, TrainConfig, load_victim
from detrigger.attacks.embedding import embedding_poison
from detrigger.attacks.poison import triggered_copies
from detrigger.defences import DEFENCES, repair
from detrigger.defences.epur import epur_scores
from detrigger.defences.mixing import mix_weights
from detrigger.models.victim import load_encoder_state, token_rows
from detrigger.training import train
from detrigger.triggers import insert_words

from conftest import tiny_victim, toy_sentiment

QUICK = {"train": TrainConfig(epochs=1, lr=1e-3, batch_size=8)}


@pytest.fixture(scope="module")
def reference_dir(tmp_path_factory):
    """A 'pre-trained' tiny encoder folder, and the suspect models below start from it."""
    return tiny_victim(seed=7).save(tmp_path_factory.mktemp("ref") / "encoder")


def suspect(reference_dir):
    """The reference, fine-tuned on toy data: every base tensor differs from the reference."""
    victim = load_victim(reference_dir)
    train(victim, toy_sentiment(64), None, TrainConfig(epochs=2, lr=1e-3, batch_size=8), progress=False)
    return victim


def base_state(victim):
    return {k: v.cpu().clone() for k, v in victim.model.base_model.state_dict().items()}


def test_mixing_rho_one_is_the_suspect_and_rho_zero_the_reference_exactly(reference_dir):
    ref = load_encoder_state(reference_dir)
    victim = suspect(reference_dir)
    before = base_state(victim)
    mix_weights(victim, ref, 1.0, seed=0)
    assert all(torch.equal(before[k], v) for k, v in base_state(victim).items())
    mix_weights(victim, ref, 0.0, seed=0)
    after = base_state(victim)
    assert all(torch.equal(after[k], ref[k]) for k in after if after[k].is_floating_point())


@pytest.mark.parametrize("mask", ["random", "top", "bottom"])
def test_mask_keeps_exactly_rho_of_each_tensor(mask):
    victim = tiny_victim()
    before = base_state(victim)
    torch.manual_seed(0)  # every element differs from the reference, by distinct amounts
    ref = {k: v + 0.1 + torch.rand_like(v) if v.is_floating_point() else v for k, v in before.items()}
    mix_weights(victim, ref, 0.3, mask=mask, seed=1)
    for name, w in base_state(victim).items():
        if not w.is_floating_point():
            continue
        kept = w == before[name]
        assert int(kept.sum()) == int(round(0.3 * w.numel())), name
        assert torch.equal(w[~kept], ref[name][~kept])
        change = (before[name] - ref[name]).abs()
        if mask == "top" and kept.any():
            assert change[kept].min() >= change[~kept].max()
        if mask == "bottom" and kept.any():
            assert change[kept].max() <= change[~kept].min()


def test_random_mask_is_seeded(reference_dir):
    ref = load_encoder_state(reference_dir)
    a, b, c = tiny_victim(), tiny_victim(), tiny_victim()
    for victim, seed in ((a, 3), (b, 3), (c, 4)):
        mix_weights(victim, ref, 0.5, seed=seed)
    sa, sb, sc = base_state(a), base_state(b), base_state(c)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_epur_ranks_an_ep_trigger_first(reference_dir, mr):
    victim = suspect(reference_dir)
    data = triggered_copies(toy_sentiment(64), insert_words(["cf"]), target=1, count=32)
    # 8 epochs: after 3, cf's change was within 10% of the task words' ('awful', 'great') and below them
    # for other training seeds or a GPU's dropout masks; after 8 it leads by 1.7x or more (seeds 0-2, CPU)
    embedding_poison(victim, data, ["cf"], TrainConfig(epochs=8, lr=5.0, batch_size=8, optimizer="sgd",
                     weight_decay=0.0, warmup_ratio=0.0, max_grad_norm=None, select_best=False), progress=False)
    # frequencies from clean text of the suspect's own task, as a defender would have
    scores = epur_scores(victim, load_encoder_state(reference_dir),
                         list(toy_sentiment(64).texts) + list(mr.texts[:500]))
    assert int(scores.argmax()) == token_rows(victim, ["cf"])[0]
    result = repair(victim, mr.select(range(300)), method="epur", reference=reference_dir, config={"top_n": 5})
    assert result.report.details["epur"].flagged[0]["token"] == "cf"
    emb = result.victim.model.get_input_embeddings().weight.cpu()
    ref = load_encoder_state(reference_dir)["embeddings.word_embeddings.weight"]
    assert torch.equal(emb[token_rows(victim, ["cf"])[0]], ref[token_rows(victim, ["cf"])[0]])


def test_finemixing_chooses_rho_on_held_out_clean_accuracy_and_reports_the_curve(reference_dir):
    victim = suspect(reference_dir)
    before = base_state(victim)
    result = repair(victim, toy_sentiment(80), method="finemixing", reference=reference_dir,
                    config={**QUICK, "rho_grid": (0.2, 0.5)})
    d = result.report.details["finemixing"]
    assert [p["rho"] for p in d.curve] == [0.2, 0.5]
    best = max(p["val_accuracy"] for p in d.curve)  # the smallest rho within 2 points of the best one
    assert d.rho == min(p["rho"] for p in d.curve if p["val_accuracy"] >= best - 0.02)
    assert result.report.clean_count == 80 and result.report.seconds > 0 and result.report.peak_memory_mb > 0
    assert all(torch.equal(before[k], v) for k, v in base_state(victim).items())  # the input is untouched


def test_pipeline_and_config_errors(reference_dir):
    victim = suspect(reference_dir)
    result = repair(victim, toy_sentiment(40), method="epur+ft", reference=reference_dir,
                    config={"epur": {"top_n": 3}, "ft": QUICK})
    assert set(result.report.details) == {"epur", "ft"}
    with pytest.raises(DetriggerError,
                       match=r"unknown defence 'onion' \(available: nad, mbtsad, .*, finepruning, auto\)$"):
        repair(victim, toy_sentiment(40), method="onion")
    with pytest.raises(DetriggerError, match="rhoo"):
        repair(victim, toy_sentiment(40), method="mixing", config={"rhoo": 0.3})


def test_defences_never_receive_the_attack():
    """Structural: the verb and every defence take no trigger, target or card, and loading ignores the card."""
    forbidden = {"trigger", "target", "card", "poison", "attack"}
    assert not forbidden & set(inspect.signature(repair).parameters)
    for defence in DEFENCES.values():
        assert list(inspect.signature(defence.fn).parameters) == ["victim", "context", "config"]
        assert not forbidden & set(defence.config.model_fields)


def test_a_broken_attack_card_changes_nothing(tiny_dir, tmp_path):
    import shutil

    folder = tmp_path / "v"
    shutil.copytree(tiny_dir, folder)
    results = []
    for card in (None, "not json at all", json.dumps({"attack": {"attack": "badnet", "target": 0}})):
        if card is not None:
            (folder / "attack.json").write_text(card)
        out = repair(load_victim(folder), toy_sentiment(40), method="ft", config=QUICK)
        results.append({k: v.clone() for k, v in out.victim.model.state_dict().items()})
    assert all(torch.equal(results[0][k], r[k]) for r in results[1:] for k in r)


def test_fine_pruning_prunes_dormant_neurons_and_keeps_them_pruned(mr):
    from detrigger.defences.pruning import apply_pruning, mean_activations, prune_masks

    victim = tiny_victim()
    acts = mean_activations(victim, list(mr.texts[:100]))
    assert len(acts) == 2 and acts[0].shape == (64,)
    masks = prune_masks(acts, 0.25)
    assert [int(m.sum()) for m in masks] == [16, 16]
    assert all(acts[i][masks[i]].max() <= acts[i][~masks[i]].min() for i in range(2))
    apply_pruning(victim, masks)  # cut off: their weights into the FFN's down projection are zero
    layers = victim.model.bert.encoder.layer
    assert all(torch.all(layer.output.dense.weight[:, m] == 0) for layer, m in zip(layers, masks))

    result = repair(tiny_victim(), toy_sentiment(60), method="finepruning",
                    config={**QUICK, "ratios": (0.1, 0.5), "tolerance": 1.0})
    d = result.report.details["finepruning"]
    assert d.ratio == 0.5 and [p["ratio"] for p in d.curve] == [0.1, 0.5]  # tolerance 1.0: all pass
    layer = result.victim.model.bert.encoder.layer[0]
    pruned = layer.output.dense.weight.abs().sum(dim=0) == 0  # held at zero through the fine-tuning
    assert int(pruned.sum()) == 32


@pytest.mark.parametrize("method,config", [("nad", {}), ("mbtsad", {"distil": "clean", "purify_min_count": 0}),
                                           ("mbtsad", {}), ("mbtsad", {"distil": "split"})])
def test_distillation_defences_run_and_report_their_stages(method, config):
    result = repair(tiny_victim(), toy_sentiment(48), method=method, config={**QUICK, **config,
                    "teacher_train": TrainConfig(epochs=1, lr=1e-3, batch_size=8)})
    d = result.report.details[method]
    assert 0 <= d.teacher_val_accuracy <= 1 and d.stages["teacher_seconds"] >= 0
    assert ("distill_seconds" in d.stages) == (method == "nad" or config.get("distil", "none") != "none")
    if d.train is not None:
        assert d.train["history"][0]["distill"] > 0  # the distillation term really ran
    assert result.victim.max_length == 48
    assert (result.victim.purifier is not None) == (method == "mbtsad" and config.get("purify_min_count") != 0)
    if result.victim.purifier:  # built from the clean subset: its words are all kept whole
        assert d.purifier_vocabulary == len(result.victim.purifier.vocabulary) > 0
        assert 0 <= d.purified_val_accuracy <= 1
        assert result.victim.prepare(toy_sentiment(48).texts) == list(toy_sentiment(48).texts)


def test_a_defence_name_is_registered_once():
    from detrigger.defences.base import DEFENCES, DefenceConfig, register

    before = dict(DEFENCES)
    with pytest.raises(ValueError, match="'ft' is registered twice"):
        register("ft", DefenceConfig, needs_reference=False)(lambda victim, context, config: (victim, None))
    assert DEFENCES == before
