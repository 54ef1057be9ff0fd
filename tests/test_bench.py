"""The benchmark runner on a tiny real grid: spec errors, cache keys, resume after SIGKILL, Ray = local."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from detrigger.attacks.attack import AttackSpec, victim_folder
from detrigger.bench import load_records, load_spec, run_bench, write_report
from detrigger.bench.records import CellRecord, cell_key
from detrigger.data import DataSpec
from detrigger.errors import DetriggerError
from detrigger.training import TrainConfig

QUICK = {"epochs": 1, "lr": 1e-3, "batch_size": 16}


def tiny_spec(encoder: Path, seeds=(0, 1)) -> dict:
    """Two seeds x (clean model, victim, FT, Fine-mixing) on 200 MR texts and a 2-layer encoder."""
    return {"name": "tiny", "data": [{"source": "mr", "val": 50, "test": 100, "max_train": 200}],
            "attacks": [{"name": "badnet", "attack": "badnet", "words": ["cf"], "rate": 0.2, "train": QUICK}],
            "defences": [{"method": "ft", "config": {"train": QUICK}},
                         {"name": "fm", "method": "finemixing", "config": {"rho": 0.5, "train": QUICK}}],
            "clean_fractions": [0.5], "seeds": list(seeds), "encoder": str(encoder), "max_length": 48,
            "clean_train": QUICK}


def write_spec(path: Path, spec: dict) -> Path:
    path.write_text(json.dumps(spec))  # JSON is YAML
    return path


def comparable(records: dict) -> dict:
    """Records without what legitimately differs between runs (times, memory)."""
    def strip(r):
        r = {k: v for k, v in r.as_dict().items() if k not in ("seconds", "cell_seconds", "peak_memory_mb")}
        for step in (r.get("details") or {}).values():
            step.pop("stages", None)
        return r
    return {k: strip(r) for k, r in records.items()}


def record(**fields) -> CellRecord:
    """A finished record with placeholder identity fields."""
    return CellRecord(**{"key": "k", "status": "done", "method": None, "config": {}, **fields})


@pytest.fixture
def model_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DETRIGGER_MODEL_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.mark.parametrize("patch, key", [
    ({"seeds": [0], "seed": 1}, "seed: Extra inputs"),
    ({"attacks": [{"attack": "badnet", "rate": 2}]}, "attacks.0.rate"),
    ({"attacks": [{"attack": "badnet", "seed": 3}]}, "attacks.0: set seeds at the top level"),
    ({"attacks": [{"attack": "nope"}]}, "attacks.0.attack"),
    ({"data": [{"source": "mr", "colour": 1}]}, "data.0.colour"),
    ({"defences": ["ft", {"method": "finemixing", "config": {"rhoo": 1}}]}, "defences.1: finemixing config: rhoo"),
    ({"defences": ["nope"]}, "defences.0: unknown defence 'nope'"),
    ({"clean_fractions": [0]}, "clean_fractions"),
    ({"clean_train": {"epochs": 1, "lrr": 1}}, "clean_train.lrr"),
    ({"seeds": [0, 1], "defences": ["ft", {"method": "nad", "seeds": [2]}]},
     r"defences.1.seeds: \[2\] are not all among the spec's seeds"),
])
def test_spec_errors_name_the_key(tmp_path, patch, key):
    spec = {"data": ["mr"], "attacks": [{"attack": "badnet"}], "defences": ["ft"], **patch}
    path = write_spec(tmp_path / "s.yaml", spec)
    with pytest.raises(DetriggerError, match=f"^{path}: {key}"):
        load_spec(path)


def test_spec_yaml_syntax_error_names_the_line(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("data: [mr]\nattacks: [{attack: badnet}\ndefences: [ft]\n")
    with pytest.raises(DetriggerError, match=r"s.yaml: line \d+: invalid YAML"):
        load_spec(path)


def test_grid_expansion_and_cache_keys_change_with_every_determining_field(tmp_path, tiny_dir):
    spec = load_spec(write_spec(tmp_path / "s.yaml", tiny_spec(tiny_dir)))
    cells = spec.cells()
    assert len(cells) == 2 * (2 + 2)  # seeds x (clean model, no defence, ft, fm)
    keys = {cell_key(spec, c) for c in cells}
    assert len(keys) == len(cells)
    assert keys == {cell_key(load_spec(tmp_path / "s.yaml"), c) for c in cells}  # stable across loads
    base = tiny_spec(tiny_dir)
    variants = [{"max_length": 64}, {"clean_train": {**QUICK, "lr": 2e-3}}, {"clean_fractions": [0.4]},
                {"data": [{**base["data"][0], "max_train": 150}]},
                {"attacks": [{**base["attacks"][0], "rate": 0.1}]},
                {"defences": [base["defences"][0], {**base["defences"][1], "config": {"rho": 0.4, "train": QUICK}}]}]
    for i, patch in enumerate(variants):
        changed = load_spec(write_spec(tmp_path / f"v{i}.yaml", {**base, **patch}))
        changed_keys = {cell_key(changed, c) for c in changed.cells()}
        assert changed_keys - keys, patch  # some cell changed its key ...
        assert len(changed_keys & keys) < len(keys), patch  # ... so it is not reused
    one_seed = tiny_spec(tiny_dir)  # a defence limited to seed 1: its cells there keep their keys
    one_seed["defences"][1] = {**one_seed["defences"][1], "seeds": [1]}
    limited = load_spec(write_spec(tmp_path / "limited.yaml", one_seed))
    assert [(c.seed, c.defence) for c in limited.cells() if c.defence == "fm"] == [(1, "fm")]
    assert {cell_key(limited, c) for c in limited.cells()} < keys
    data, attack = DataSpec(source="mr"), AttackSpec(attack="badnet")
    folder = victim_folder(data, attack, clean_config=TrainConfig(), encoder=None, max_length=128)
    assert folder == victim_folder(data, attack, clean_config=TrainConfig(), encoder=None, max_length=128)
    for other in [dict(data=DataSpec(source="mr", seed=1)), dict(attack=AttackSpec(attack="badnet", rate=0.2)),
                  dict(clean_config=TrainConfig(lr=1e-4)), dict(encoder=tiny_dir), dict(max_length=64)]:
        kw = {"data": data, "attack": attack, "clean_config": TrainConfig(), "encoder": None, "max_length": 128,
              **other}
        assert victim_folder(kw.pop("data"), kw.pop("attack"), **kw) != folder, other


def run_cli(*args, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "detrigger.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


@pytest.mark.slow
def test_resume_after_sigkill_gives_the_same_records(tmp_path, tiny_dir, model_cache):
    spec = write_spec(tmp_path / "s.yaml", tiny_spec(tiny_dir))
    whole = run_cli("bench", str(spec), "--out", str(tmp_path / "whole"), "--no-progress")
    out, err = whole.communicate(timeout=600)
    assert whole.returncode == 0, err
    assert "| badnet | fm | 50% | 2 |" in out
    expected = load_records(tmp_path / "whole")
    assert len(expected) == 8 and all(r.status == "done" for r in expected.values())

    killed = run_cli("bench", str(spec), "--out", str(tmp_path / "run"), "--no-progress")
    cells = tmp_path / "run" / "cells"
    deadline = time.time() + 300
    while len(list(cells.glob("*.json"))) < 3 and killed.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    partial = load_records(tmp_path / "run")
    assert 3 <= len(partial) < 8  # killed mid-grid, with whole records only
    resumed = run_cli("bench", str(spec), "--out", str(tmp_path / "run"), "--no-progress")
    _, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    assert comparable(load_records(tmp_path / "run")) == comparable(expected)
    assert len(list(cells.glob("*.json"))) == 8 and not list(cells.glob(".*"))  # no duplicates, no temp files
    for key in partial:  # completed cells were not redone
        assert load_records(tmp_path / "run")[key].cell_seconds == partial[key].cell_seconds


@pytest.mark.slow
def test_ray_executor_gives_the_same_records_as_local(tmp_path, tiny_dir, model_cache):
    pytest.importorskip("ray")
    spec = load_spec(write_spec(tmp_path / "s.yaml", tiny_spec(tiny_dir, seeds=(0,))))
    local = run_bench(spec, tmp_path / "local", progress=False)
    remote = run_bench(spec, tmp_path / "ray", executor="ray", progress=False)
    assert len(local) == 4 and comparable(remote) == comparable(local)


def test_failed_cells_are_recorded_and_retried(tmp_path, tiny_dir, model_cache, monkeypatch):
    import detrigger.bench.runner as runner

    spec = load_spec(write_spec(tmp_path / "s.yaml", tiny_spec(tiny_dir, seeds=(0,))))
    real = runner.run_cell

    def flaky(spec, cell, key, threads=None):
        if cell.defence == "fm":
            raise RuntimeError("out of memory (simulated)")
        return real(spec, cell, key, threads)

    monkeypatch.setattr(runner, "run_cell", flaky)
    records = run_bench(spec, tmp_path / "run", progress=False)
    failed = [r for r in records.values() if r.status == "failed"]
    assert len(records) == 4 and len(failed) == 1 and "out of memory (simulated)" in failed[0].error
    table = write_report(tmp_path / "run")
    assert "1 failed cell(s)" in table and "| badnet | ft | 50% | 1 |" in table
    monkeypatch.setattr(runner, "run_cell", real)
    assert run_bench(spec, tmp_path / "run", progress=False) == records  # not retried unless asked
    records = run_bench(spec, tmp_path / "run", retry_failed=True, progress=False)
    assert all(r.status == "done" for r in records.values())
    fm = next(r for r in records.values() if r.defence == "fm")
    assert fm.details["finemixing"].rho == 0.5 and fm.rho == 0.5 and fm.clean_count == 100


def test_a_slice_of_the_grid_runs_now_and_the_rest_later(tmp_path, tiny_dir, model_cache):
    spec = load_spec(write_spec(tmp_path / "s.yaml", tiny_spec(tiny_dir)))
    with pytest.raises(DetriggerError, match=r"seed 5 is not in the spec \(it has 0, 1\)"):
        run_bench(spec, tmp_path / "run", seeds=[5])
    with pytest.raises(DetriggerError, match="attack addsent is not in the spec"):
        run_bench(spec, tmp_path / "run", attacks=["addsent"])
    first = run_bench(spec, tmp_path / "run", seeds=[1], attacks=["badnet"], progress=False)
    assert len(first) == 4 and {r.seed for r in first.values()} == {1}
    full = run_bench(spec, tmp_path / "run", progress=False)
    assert len(full) == 8 and all(full[k] == r for k, r in first.items())  # kept, not rerun


def test_report_files_and_cli(tmp_path, tiny_dir, model_cache):
    spec = load_spec(write_spec(tmp_path / "s.yaml", tiny_spec(tiny_dir, seeds=(0,))))
    run_bench(spec, tmp_path / "run", progress=False)
    (tmp_path / "run" / "results.md").unlink()
    proc = subprocess.run([sys.executable, "-m", "detrigger.cli", "report", str(tmp_path / "run")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "### tiny" in proc.stdout and "| badnet | clean model | - | 1 |" in proc.stdout
    assert (tmp_path / "run" / "results.md").read_text().strip() == proc.stdout.strip()
    assert "4 of 4 cells of the spec recorded (seeds by attack: badnet 0)." in proc.stdout
    doc = tmp_path / "results-doc.md"
    doc.write_text(f"# Results\nintro\n<!-- detrigger report {tmp_path / 'run'} -->\nold table\n"
                   "<!-- /detrigger report -->\noutro\n")
    proc = subprocess.run([sys.executable, "-m", "detrigger.cli", "report", str(tmp_path / "run"), "--into", str(doc)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    text = doc.read_text()
    assert text.startswith("# Results\nintro\n") and text.endswith("<!-- /detrigger report -->\noutro\n")
    assert "old table" not in text and "| badnet | clean model | - | 1 |" in text and "### tiny" not in text
    proc = subprocess.run([sys.executable, "-m", "detrigger.cli", "report", str(tmp_path / "run"), "--into",
                           str(tmp_path / "no-markers.md")], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "no '<!-- detrigger report" in proc.stderr
    header = (tmp_path / "run" / "results.csv").read_text().splitlines()[0]
    assert header.startswith("data,attack,defence,method,clean_fraction,seed,status,cacc,asr,trigger_effect")
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert len(results) == 4  # no input purifier in this grid: the saved folder is the model measured
    assert all(r["saved_trigger_effect"] == r["trigger_effect"] and r["saved_cacc"] == r["cacc"] for r in results)
    assert "| saved folder: CACC / trigger effect |" in (tmp_path / "run" / "results.md").read_text()
    assert {p.name for p in (tmp_path / "run" / "plots").iterdir()} == {"bars-mr-badnet.png", "asr-vs-cacc.png"}
    saved = json.loads((tmp_path / "run" / "spec.json").read_text())  # the spec changes: fm is dropped
    (tmp_path / "run" / "spec.json").write_text(json.dumps({**saved, "defences": saved["defences"][:1]}))
    write_report(tmp_path / "run")
    assert {r["defence"] for r in json.loads((tmp_path / "run" / "results.json").read_text())} == {
        "clean model", "no defence", "ft"}  # the stale record stays on disk but out of the report
    assert len(load_records(tmp_path / "run")) == 4
    renamed = [{**saved["defences"][0], "name": "fine-tuning"}]  # the same cells under the spec's new name
    (tmp_path / "run" / "spec.json").write_text(json.dumps({**saved, "defences": renamed}))
    write_report(tmp_path / "run")
    assert {r["defence"] for r in json.loads((tmp_path / "run" / "results.json").read_text())} == {
        "clean model", "no defence", "fine-tuning"}
    proc = subprocess.run([sys.executable, "-m", "detrigger.cli", "report", str(tmp_path / "nothing")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "no such run folder" in proc.stderr


def test_bench_cli_bad_spec_is_one_line_and_writes_nothing(tmp_path):
    path = write_spec(tmp_path / "s.yaml", {"data": ["mr"], "attacks": [{"attack": "badnet", "rate": 2}]})
    proc = subprocess.run([sys.executable, "-m", "detrigger.cli", "bench", str(path), "--out", str(tmp_path / "run")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert f"{path}: attacks.0.rate: Input should be less than or equal to 1" in proc.stderr
    assert not (tmp_path / "run").exists()


def test_plots_draw_only_mixing_curves_as_rho_curves(tmp_path):
    from detrigger.bench.report import plot

    base = {"data": "mr", "attack": "badnet", "clean_fraction": 0.2, "seed": 0, "cacc": 0.8, "asr": 0.3}
    records = [record(**base, defence="finepruning",
                      details={"finepruning": {"ratio": 0.1, "curve": [{"ratio": 0.1, "val_accuracy": 0.8}]}}),
               record(**base, defence="fm", details={"epur": {}, "finemixing": {"rho": 0.1, "curve": [
                   {"rho": 0.1, "val_accuracy": 0.8}, {"rho": 0.3, "val_accuracy": 0.85}]}})]
    names = {p.name for p in plot(records, tmp_path)}
    assert names == {"bars-mr-badnet.png", "asr-vs-cacc.png", "rho-curve.png"}
    assert {p.name for p in plot(records[:1], tmp_path / "fp")} == {"bars-mr-badnet.png", "asr-vs-cacc.png"}


def test_report_tables_stage_times_of_the_defences_that_report_them():
    from detrigger.bench.report import markdown

    base = {"data": "mr", "attack": "badnet", "clean_fraction": 0.2, "cacc": 0.8, "asr": 0.3}
    records = [record(**base, defence="ft", seed=0, details={"ft": {}})]
    records += [record(**base, defence="mbtsad", seed=seed, details={"mbtsad": {
        "teacher_val_accuracy": acc, "stages": {"split_seconds": 0.05, "teacher_seconds": secs}}})
        for seed, secs, acc in ((0, 150.0, 0.94), (1, 170.0, 0.92))]
    text = markdown(records)
    assert "| attack | defence | seeds | split | teacher | teacher held-out acc. |" in text
    assert "| badnet | mbtsad | 2 | 0.1 | 160.0 | 93.00 ± 1.41 |" in text
    assert "| badnet | ft | 1 | -" not in text.split("Repair stages")[1]  # no stages, no row
    assert "Repair stages" not in markdown(records[:1])


def test_report_shows_the_reverse_effect_only_where_a_record_measured_it():
    from detrigger.bench.report import markdown

    base = {"data": "mr", "attack": "badnet", "clean_fraction": 0.2, "cacc": 0.8, "asr": 0.3, "trigger_effect": 0.1}
    old = [record(**base, defence="ft", seed=0)]  # made before the reverse effect was measured
    assert "reverse effect" not in markdown(old)
    new = old + [record(**base, defence="auto", seed=0, reverse_effect=0.25)]
    rows = {line.split(" | ")[1]: line for line in markdown(new).splitlines() if line.startswith("| badnet")}
    assert "| trigger effect | reverse effect | RA |" in markdown(new)
    assert "| 10.00 ± 0.00 | 25.00 ± 0.00 | - |" in rows["auto"] and "| 10.00 ± 0.00 | - | - |" in rows["ft"]


def mr_csv(path: Path, n: int = 160, flip: bool = False) -> Path:
    """A CSV file of real MR sentences (labels flipped with `flip`)."""
    import csv

    from detrigger.data import load_data

    mr = load_data("mr")
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        for text, label in list(zip(mr.texts, mr.labels))[:: len(mr) // n][:n]:
            writer.writerow([text, mr.label_names[1 - label if flip else label]])
    return path


def test_an_edited_data_file_gets_new_cache_and_cell_keys(tmp_path, tiny_dir, model_cache, caplog):
    """The keys hash the file's content, not its path: after every label is flipped, neither the clean model
    nor a bench cell is served from what was computed before."""
    import logging

    from detrigger.training.recipe import clean_model

    data = mr_csv(tmp_path / "reviews.csv")
    spec_dict = {**tiny_spec(tiny_dir, seeds=(0,)), "data": [{"source": str(data), "val": 20, "test": 40}]}
    spec = load_spec(write_spec(tmp_path / "s.yaml", spec_dict))
    keys = {cell_key(spec, c) for c in spec.cells()}
    victim = victim_folder(spec.data[0], spec.attacks[0].at_seed(0), clean_config=spec.clean_train,
                           encoder=tiny_dir, max_length=48)
    config = TrainConfig(**QUICK)
    _, before = clean_model(spec.data[0], config, encoder=tiny_dir, max_length=48, progress=False)
    mr_csv(data, flip=True)
    edited = load_spec(tmp_path / "s.yaml")
    assert not keys & {cell_key(edited, c) for c in edited.cells()}
    assert victim_folder(edited.data[0], edited.attacks[0].at_seed(0), clean_config=edited.clean_train,
                         encoder=tiny_dir, max_length=48) != victim
    with caplog.at_level(logging.INFO, logger="detrigger"):
        clean_model(edited.data[0], config, encoder=tiny_dir, max_length=48, progress=False)
    assert "from cache" not in caplog.text
    assert len([p for p in (model_cache / "clean").iterdir() if p.is_dir()]) == 2


@pytest.mark.slow
def test_bench_with_a_csv_data_source_end_to_end(tmp_path, tiny_dir, model_cache):
    data = mr_csv(tmp_path / "my data.csv")
    spec_dict = {**tiny_spec(tiny_dir, seeds=(0,)), "data": [{"source": str(data), "val": 20, "test": 40}],
                 "defences": [{"method": "ft", "config": {"train": QUICK}}]}
    spec_file = write_spec(tmp_path / "s.yaml", spec_dict)
    proc = subprocess.run([sys.executable, "-m", "detrigger.cli", "bench", str(spec_file),
                           "--out", str(tmp_path / "run"), "--no-progress"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    records = load_records(tmp_path / "run")
    assert len(records) == 3 and all(r.status == "done" for r in records.values())
    bars = [p.name for p in (tmp_path / "run" / "plots").glob("bars-*.png")]
    assert len(bars) == 1 and "/" not in bars[0] and bars[0].endswith("my_data.csv-badnet.png")
    table = (tmp_path / "run" / "results.md").read_text()
    assert f"**{data}**" in table and "| badnet | ft | 50% | 1 |" in table


def test_a_field_added_later_at_its_neutral_value_keeps_the_cell_keys_of_records_made_before_it():
    """`key_dump`: a field marked with a neutral value (what the code did before the field existed: the scan's
    `phrase_words` 0) is left out of a cell's key at that value, also inside a nested config (auto's scan), so the
    records made before it stay valid; any other value, its default included, is in the key (a new cell)."""
    from detrigger.bench.spec import key_dump
    from detrigger.defences.auto import AutoConfig
    from detrigger.scan import ScanConfig

    default = AutoConfig()
    assert default.scan.phrase_words == 6 and key_dump(default)["scan"]["phrase_words"] == 6
    # auto as it was before these fields: each at its neutral value, so out of the key
    before = AutoConfig(scan=ScanConfig(samples=100, phrase_words=0, lexicon_words=0, drifted_lexicon=0),
                        reset_first=False, own_share=0, later_rounds="any")
    assert key_dump(before) == {**{k: v for k, v in before.model_dump(mode="json").items()
                                   if k not in ("reset_first", "own_share", "later_rounds", "rescan_vocabulary",
                                                "reference_free_lexicon", "undecided")},
                                "scan": {k: v for k, v in before.scan.model_dump(mode="json").items()
                                         if k not in ("phrase_words", "combination_words", "verify_floor",
                                                      "lexicon_words", "drifted_lexicon")}}
    # fields whose default is their neutral value (re-scans without the vocabulary pass, no combination pass):
    # a default cell keys as before them; turned on, they key as set
    assert "rescan_vocabulary" not in key_dump(default) and "combination_words" not in key_dump(default)["scan"]
    assert "verify_floor" not in key_dump(default)["scan"] and "lexicon_words" not in key_dump(default)["scan"]
    # only the scans without a reference type the common words in auto, and every recorded cell had one
    assert "reference_free_lexicon" not in key_dump(default)
    assert key_dump(AutoConfig(reference_free_lexicon=0))["reference_free_lexicon"] == 0
    # undecided verdicts repaired: the records with an undecided first scan were run again (docs/defences.md)
    assert "undecided" not in key_dump(default)
    assert key_dump(AutoConfig(undecided="unchanged"))["undecided"] == "unchanged"
    assert key_dump(AutoConfig(rescan_vocabulary=True))["rescan_vocabulary"] is True
    # today's defaults are not neutral: they key as set
    assert {k: key_dump(default)[k] for k in ("reset_first", "own_share", "later_rounds")} == {
        "reset_first": True, "own_share": 0.5, "later_rounds": "siblings"}
    assert key_dump(default)["scan"]["drifted_lexicon"] == 20  # since 2026-12-02: a new cell for every auto record
