"""The model card of a repaired folder: front matter, the facts of repair.json, scans, and how to run it."""

from __future__ import annotations

import yaml

from detrigger.card import render_card, saved_note


def record(**changes) -> dict:
    """A repair.json record as `RepairResult.save` writes it (figures made up, keys real)."""
    base = {"method": "epur+finemixing", "config": {}, "clean_count": 1785, "clean_fraction": 0.2, "seconds": 91.4,
            "peak_memory_mb": 2345.6, "heldout_count": 179, "accuracy_before": 0.8715, "accuracy_after": 0.8045,
            "accuracy_with_purifier": None, "details": {"epur": {"reset_rows": 200}, "finemixing": {"rho": 0.3}},
            "repaired_from": "/data/victims/mr-badnet", "clean_data": "mr", "base_model": "embedded:all-MiniLM-L6-v2",
            "max_length": 128, "finished": "2026-11-29T07:28:09+00:00",
            "saved": {"purifier": False, "plain_transformers": True}}
    base.update(changes)
    base["saved"] = {**base["saved"], "note": saved_note(base)}
    return base


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def test_front_matter_and_the_facts():
    card = render_card(record())
    assert front_matter(card) == {"library_name": "transformers", "pipeline_tag": "text-classification",
                                  "tags": ["backdoor-defense", "detrigger", "epur", "finemixing"],
                                  "base_model": "sentence-transformers/all-MiniLM-L6-v2"}
    for fact in ("`/data/victims/mr-badnet`", "`epur+finemixing`", "1,785 texts (20.0% of the clean pool) from `mr`",
                 "before 87.15%, after 80.45% (weights alone); 179 texts", "91 s, peak memory 2,346 MB",
                 'pipeline("text-classification", model="path/to/this/folder")', "first 128 tokens",
                 'load_victim("path/to/this/folder")'):
        assert fact in card, fact
    assert "Scan" not in card and "deployable" not in card  # no scans in this report; nothing left out


def test_an_unknown_base_model_is_left_out():
    assert "base_model" not in front_matter(render_card(record(base_model="/home/me/encoder")))


def test_scans_before_and_after_from_a_steps_details():
    scan_before = {"verdict": "backdoored", "score": 1.0, "target_label": "positive",
                   "tokens": [{"token": "cf", "label": "positive", "effect": 1.0}, {"token": "mn", "effect": 0.98}]}
    scan_after = {"verdict": "no evidence", "score": 0.31, "target_label": "negative", "tokens": []}
    card = render_card(record(method="auto", details={"auto": {"scan_before": scan_before, "scan_after": scan_after}}))
    assert "| before | backdoored | 1.000 | positive | cf (1.00), mn (0.98) |" in card
    assert "| after | no evidence | 0.310 | negative | - |" in card and "Decision" not in card
    # SMS AddSent seed 1: the first verdict was undecided, and auto repaired the model as flagged
    undecided = {**scan_before, "verdict": "no evidence", "score": 0.922, "undecided": True}
    decision = "undecided (0.922, ...), taken as flagged: Fine-mixed at rho 0.5, unlearned 1 tokens in 1 rounds"
    card = render_card(record(method="auto", details={"auto": {"scan_before": undecided, "scan_after": scan_after,
                                                               "decision": decision}}))
    assert "| before | no evidence (undecided) | 0.922 | positive |" in card and f"Decision: {decision}.\n" in card


def test_a_steps_warning_is_on_the_card():
    card = render_card(record(method="auto", details={"auto": {"warning": "no reference fits this model"}}))
    assert "**Warning: no reference fits this model.**" in card
    assert "Warning" not in render_card(record())


def test_a_purifier_left_out_or_shipped_is_said_so():
    left_out = record(method="mbtsad", accuracy_with_purifier=0.79)
    note = left_out["saved"]["note"]
    assert note.startswith("not deployable as repaired: mbtsad's protection includes an input purifier")
    assert "--ship-purifier" in note and "80.45% (79.00% with the purifier)" in note
    card = render_card(left_out)
    assert f"**N{note[1:]}.**" in card and "pipeline(" in card and "79.00% with the input purifier" in card
    shipped = record(method="mbtsad", accuracy_with_purifier=0.79,
                     saved={"purifier": True, "plain_transformers": False})
    card = render_card(shipped)
    assert shipped["saved"]["note"].startswith("not deployable through plain transformers")
    assert "Not deployable through plain transformers" in card and "pipeline(" not in card
    assert "detrigger eval path/to/this/folder" in card
    assert saved_note(record()) is None
