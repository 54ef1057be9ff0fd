"""The model card (`README.md`) of a repaired folder, rendered from what `repair.json` holds.

Hugging Face YAML front matter, then the suspect, what was done, the clean budget, held-out clean
accuracy before and after, the time, the scans before and after when the report has them (`scan_before` /
`scan_after` dicts, at the top level or in a step's details) and a step's `warning`, whether plain
`transformers` runs the folder as detrigger does, and how to run it. Generic: it reads keys, so any
defence's report renders.
"""

from __future__ import annotations

from typing import Any

import yaml

# Hub ids of the encoders detrigger embeds (a local encoder folder has none: no base_model then).
HUB_IDS = {"embedded:all-MiniLM-L6-v2": "sentence-transformers/all-MiniLM-L6-v2"}


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def saved_note(record: dict[str, Any]) -> str | None:
    """One line when the repair's protection is not (all) in the saved weights; None when it is."""
    if record.get("accuracy_with_purifier") is None:
        return None
    if record["saved"]["purifier"]:
        return ("not deployable through plain transformers: this folder's protection includes an input purifier "
                "(purifier.json, the defender's clean-data vocabulary) that only detrigger applies (detrigger CLI, "
                "load_victim); loaded with transformers alone the weights may still respond to a rare-word trigger")
    return (f"not deployable as repaired: {record['method']}'s protection includes an input purifier that plain "
            "transformers cannot apply, and it was not saved (it lists your clean-data vocabulary; --ship-purifier "
            "saves it, for use through detrigger only); saved the weights alone: held-out clean accuracy "
            f"{_pct(record['accuracy_after'])} ({_pct(record['accuracy_with_purifier'])} with the purifier), "
            "without the purifier's protection against rare-word triggers")


def _scans(record: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """`scan_before` / `scan_after` dicts from the report's top level or from any step's details."""
    found = {}
    for where in [record, *(d for d in record.get("details", {}).values() if isinstance(d, dict))]:
        for key in ("scan_before", "scan_after"):
            if isinstance(where.get(key), dict) and key not in found:
                found[key] = where[key]
    return found


def _tokens(scan: dict[str, Any], n: int = 5) -> str:
    shown = []
    for t in (scan.get("tokens") or [])[:n]:
        if isinstance(t, dict):
            effect = t.get("effect")
            shown.append(f"{t.get('token')} ({effect:.2f})" if isinstance(effect, float) else str(t.get("token")))
        else:
            shown.append(str(t))
    return ", ".join(shown) or "-"


def render_card(record: dict[str, Any]) -> str:
    """The card's Markdown, YAML front matter included, for one `repair.json` record."""
    meta: dict[str, Any] = {"library_name": "transformers", "pipeline_tag": "text-classification",
                            "tags": ["backdoor-defense", "detrigger", *record["method"].split("+")]}
    if record.get("base_model") in HUB_IDS:
        meta["base_model"] = HUB_IDS[record["base_model"]]
    budget = f"{record['clean_count']:,} texts"
    if record.get("clean_fraction") is not None:
        budget += f" ({100 * record['clean_fraction']:.1f}% of the clean pool)"
    if record.get("clean_data"):
        budget += f" from `{record['clean_data']}`"
    accuracy = (f"before {_pct(record.get('accuracy_before'))}, after {_pct(record.get('accuracy_after'))} "
                "(weights alone)")
    if record.get("accuracy_with_purifier") is not None:
        accuracy += f", {_pct(record['accuracy_with_purifier'])} with the input purifier"
    accuracy += f"; {record.get('heldout_count', 0)} texts of the clean subset held out from the repair"
    lines = ["---", yaml.safe_dump(meta, sort_keys=False).rstrip(), "---", "",
             f"# Repaired with detrigger (`{record['method']}`)", "",
             "A text classifier repaired against backdoors by detrigger from a suspect model, with a small clean "
             "labelled subset. Every figure below is in `repair.json`.", "",
             "| | |", "|---|---|",
             f"| suspect | `{record.get('repaired_from') or 'unknown'}` |",
             f"| what was done | `{record['method']}`; configuration in `repair.json` (`config`, `details`) |",
             f"| clean budget | {budget} |",
             f"| held-out clean accuracy | {accuracy} |",
             f"| time | {record.get('seconds', 0):.0f} s, peak memory {record.get('peak_memory_mb', 0):,.0f} MB"
             + (f", finished {record['finished']}" if record.get("finished") else "") + " |", ""]
    scans = _scans(record)
    if scans:
        lines += ["## Scan before and after", "",
                  "| | verdict | score | target label | top tokens (effect) |", "|---|---|---|---|---|"]
        for key, when in (("scan_before", "before"), ("scan_after", "after")):
            if key in scans:
                s = scans[key]
                score = f"{s['score']:.3f}" if isinstance(s.get("score"), float) else "-"
                verdict = s.get("verdict", "-") + (" (undecided)" if s.get("undecided") else "")
                lines.append(f"| {when} | {verdict} | {score} | {s.get('target_label', '-')} | {_tokens(s)} |")
        lines.append("")
        decisions = [step["decision"] for step in record.get("details", {}).values()
                     if isinstance(step, dict) and step.get("decision")]
        lines += [f"Decision: {d}.\n" for d in decisions]
    for step in record.get("details", {}).values():
        if isinstance(step, dict) and step.get("warning"):
            lines += [f"**Warning: {step['warning']}.**", ""]
    note = record["saved"].get("note")
    call = 'classify(["a gripping, funny film"], truncation=True)'
    if record.get("max_length"):
        call += f"  # detrigger reads the first {record['max_length']} tokens of a text: truncate the same way"
    lines += ["## How to run", ""]
    if note:
        lines += [f"**{note[0].upper()}{note[1:]}.**", ""]
    if record["saved"]["plain_transformers"]:
        lines += ["Plain `transformers` predicts exactly what detrigger measures for this folder:", "", "```python",
                  "from transformers import pipeline", "",
                  'classify = pipeline("text-classification", model="path/to/this/folder")',
                  call, "```", ""]
    lines += ["With detrigger:", "", "```bash",
              "detrigger eval path/to/this/folder my-labelled-texts.csv", "```", "", "```python",
              "from detrigger import load_victim, predict", "",
              'model = load_victim("path/to/this/folder")',
              'labels = [model.label_names[i] for i in predict(model, ["a gripping, funny film"])]', "```", ""]
    return "\n".join(lines)
