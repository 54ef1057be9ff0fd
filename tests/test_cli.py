"""The CLI as a user runs it: listings and real work through the installed executable (a subprocess), help and one
test per input error through `detrigger.cli.main` in this process (conftest.cli: the same parser and error
handling, without a new interpreter's imports for each)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import cli, fails_cleanly

CLI = str(Path(sys.executable).parent / "detrigger")


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, *args], capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=900)


@pytest.mark.parametrize("command", [[], ["data"], ["data", "list"], ["data", "fetch"], ["data", "show"],
                                     ["train"], ["eval"], ["attack"], ["repair"], ["split"]])
def test_every_command_has_help(command, capsys):
    code, out, _ = cli(capsys, *command, "--help")
    assert code == 0 and "usage: detrigger" in out


def test_help_does_not_load_the_modelling_code():
    """`detrigger COMMAND --help` builds every option from the config models, which need torch but not
    transformers' modelling machinery (about 3 s of imports on idle cores, half of what `--help` took): a fresh
    interpreter."""
    code = ("import sys\nfrom detrigger.cli import main\n"
            "for c in ('scan', 'repair', 'train', 'attack', 'eval', 'filter', 'bench', 'split', 'report'):\n"
            "    try:\n        main([c, '--help'])\n    except SystemExit:\n        pass\n"
            "print('transformers.modeling_utils' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("False")


def test_data_list_names_the_builtin_corpora():
    proc = run("data", "list")
    assert proc.returncode == 0
    for name in ("mr", "bbc", "sms", "amazon", "tweets", "nyt", "spamassassin"):
        assert f"\n{name} " in proc.stdout


def test_data_show_prints_balance_and_split():
    proc = run("data", "show", "sms", "--rows", "2", "--seed", "1")
    assert proc.returncode == 0, proc.stderr
    assert "sms: 4534 rows" in proc.stdout and "ham" in proc.stdout
    assert "split (seed 1): train 3174, val 453, test 907" in proc.stdout


# ------------------------------------------------------------------ errors (the bad-input corpus: test_bad_inputs.py)

@pytest.fixture
def out(tmp_path) -> Path:
    return tmp_path / "out"


def test_model_folder_without_weights(tiny_dir, tmp_path, capsys):
    folder = tmp_path / "model"
    shutil.copytree(tiny_dir, folder)
    (folder / "model.safetensors").unlink()
    fails_cleanly(capsys, ["eval", str(folder), "sms"], "no model weights")


def test_existing_output_folder_is_not_clobbered(tmp_path, out, capsys):
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    (tmp_path / "d.csv").write_text("text,label\nfine,1\n")
    fails_cleanly(capsys, ["train", "--data", str(tmp_path / "d.csv"), "--out", str(out), "--no-progress"],
                  "already exists")
    assert (out / "keep.txt").read_text() == "mine"


def test_bad_option_values(tiny_dir, capsys):
    fails_cleanly(capsys, ["eval", str(tiny_dir), "mr", "--trigger-word", "cf", "--target", "maybe"],
                  "--target 'maybe' is not a label")
    code, _, err = cli(capsys, "train", "--data", "mr")  # argparse: missing --out
    assert code == 2 and "--out" in err


def test_eval_json_on_a_file(tiny_dir, tmp_path):
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps({"text": f"text {i}", "label": "negative"})
                                                for i in range(5)) + "\n")
    proc = run("eval", str(tiny_dir), str(tmp_path / "d.jsonl"), "--trigger-word", "cf", "--target", "positive",
               "--json")
    assert proc.returncode == 0, proc.stderr
    m = json.loads(proc.stdout)
    assert m["split"] == "all" and m["n_test"] == 5 and m["n_poisoned"] == 5 and m["target"] == 1


def test_attack_then_eval_reads_the_card(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("DETRIGGER_MODEL_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "victim"
    proc = run("attack", "--data", "mr", "--attack", "addsent", "--encoder", str(tiny_dir), "--max-train", "100",
               "--val", "40", "--test", "60", "--epochs", "1", "--clean-epochs", "1", "--max-length", "48",
               "--out", str(out), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert "addsent (scratch) on mr: trigger 'I watched this 3D movie'" in proc.stdout
    card = json.loads((out / "attack.json").read_text())
    assert card["poison"]["n_poisoned"] == 10 and card["attack"]["sentence"] == "I watched this 3D movie"
    proc = run("eval", str(out), "mr", "--json")
    assert proc.returncode == 0, proc.stderr
    m = json.loads(proc.stdout)
    assert m["n_test"] == 60 and m["asr"] == pytest.approx(card["metrics"]["asr"])
    assert "eval:" not in proc.stderr  # no progress bar when stderr is not a terminal
    proc = run("attack", "--data", "mr", "--attack", "addsent", "--encoder", str(tiny_dir), "--max-train", "100",
               "--val", "40", "--test", "60", "--epochs", "1", "--clean-epochs", "1", "--max-length", "48",
               "--out", str(tmp_path / "again"), "--no-progress", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)  # one JSON object: the card, the target's name and the files saved
    assert out == {**json.loads((tmp_path / "again" / "attack.json").read_text()), "target_label": "positive",
                   "out": str(tmp_path / "again"), "files": out["files"]}
    assert out["metrics"] == card["metrics"] and "attack.json" in out["files"]


def test_train_json(tiny_dir, tmp_path):
    out = tmp_path / "model"
    proc = run("train", "--data", "mr", "--encoder", str(tiny_dir), "--max-train", "60", "--val", "20", "--test", "20",
               "--epochs", "1", "--max-length", "48", "--out", str(out), "--no-progress", "--json")
    assert proc.returncode == 0, proc.stderr
    record = json.loads(proc.stdout)  # one JSON object: metrics.json's record and the files saved
    assert record == {**json.loads((out / "metrics.json").read_text()), "out": str(out), "files": record["files"]}
    assert record["n_test"] == 20 and "model.safetensors" in record["files"]


def test_attack_option_errors(tmp_path, capsys):
    out = tmp_path / "v"
    fails_cleanly(capsys, ["attack", "--data", "mr", "--attack", "ep", "--setting", "scratch", "--out", str(out)],
                  "EP edits a clean fine-tuned model")
    fails_cleanly(capsys, ["attack", "--data", "mr", "--attack", "badnet", "--rate", "1.5", "--out", str(out)], "rate")
    assert not out.exists()
    fails_cleanly(capsys, ["attack", "--data", "mr", "--attack", "lwp", "--out", str(out)],
                  "attack: unknown attack 'lwp' (known: badnet, addsent, ep, es, combo, invisible, homoglyph, ripple)")
    fails_cleanly(capsys, ["attack", "--data", "mr", "--attack", "ep", "--lora", "4", "--out", str(out)],
                  "lora_rank: a LoRA victim is trained over the pre-trained encoder (setting scratch)")
    assert not out.exists()


def test_split_shows_what_the_teacher_sees():
    proc = run("split", "a beautiful cf film", "--copies", "2")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 2 and all(line.replace(" ", "") == "abeautifulcffilm" for line in lines)
    assert all("c f" in line for line in lines)


def test_threads_follow_the_cpus_given(monkeypatch, tmp_path):
    """torch's threads: --threads, else OMP_NUM_THREADS, else the affinity mask capped by a cgroup quota."""
    import detrigger.cli as cli
    import detrigger.cpus as cpus

    monkeypatch.setattr(cpus.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.setattr(cpus, "CGROUP_CPU_MAX", str(tmp_path / "absent"))
    assert cpus.cpus_given() == 4
    (tmp_path / "cpu.max").write_text("150000 100000\n")  # docker --cpus 1.5
    monkeypatch.setattr(cpus, "CGROUP_CPU_MAX", str(tmp_path / "cpu.max"))
    assert cpus.cpus_given() == 2
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cpus.cpus_given() == 4
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert cli.main(["data", "list"]) == 0 and cpus.os.environ["OMP_NUM_THREADS"] == "4"
    assert cli.main(["--threads", "1", "data", "list"]) == 0 and cpus.os.environ["OMP_NUM_THREADS"] == "1"
    proc = subprocess.run([sys.executable, "-m", "detrigger.cli", "--threads", "0", "data", "list"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "--threads must be at least 1" in proc.stderr
