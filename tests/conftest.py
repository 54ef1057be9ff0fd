"""Shared fixtures: a tiny random BERT with the real MiniLM tokenizer, and small real data slices."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

from detrigger import TextDataset, TrainConfig, Victim, default_encoder_path, load_data

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Under pytest-xdist (`make test` runs `-n 2`) the workers share the cores: each takes its part of them, and so do
# the CLI subprocesses it starts (OMP_NUM_THREADS, read by torch at import), or their threads fight over them.
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
THREADS = max(1, min(2, os.cpu_count() or 1) // WORKERS)
if WORKERS > 1:
    os.environ["OMP_NUM_THREADS"] = str(THREADS)
torch.set_num_threads(THREADS)


def pytest_collection_modifyitems(config, items):
    """Under xdist, the `slow` tests first (a stable sort: every worker collects the same order): `--dist loadgroup`
    deals them to both workers at the start, so no minute-long test is left to run alone at the end."""
    if WORKERS > 1:
        items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    """The CLI in this process (`detrigger.cli.main`, what the executable runs): exit code, stdout, stderr. Error
    paths and `--help` are tested this way, without a new interpreter's 6 s of imports; argparse's own exits
    (`--help`, a missing option) come as SystemExit."""
    from detrigger.cli import main

    try:
        code = main(list(argv))
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def fails_cleanly(capsys, argv: list[str], message: str) -> None:
    """Exit code 2 and exactly one stderr line, `detrigger: error: ...`, containing `message`."""
    code, _, err = cli(capsys, *argv)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("detrigger: error:") and message in lines[0], err


@pytest.fixture(scope="module")
def one_thread():
    """For modules of tiny models (`pytestmark = pytest.mark.usefixtures("one_thread")`): a hidden-32 model
    gains nothing from a second thread, and on a busy machine two threads make every step about 20x slower
    (measured: 240 steps in 70 s vs 3.7 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_victim(label_names=("negative", "positive"), seed: int = 0, max_length: int = 48) -> Victim:
    """A random 2-layer, hidden-32 BERT (milliseconds a step) with the real 30,522-token tokenizer."""
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, num_labels=len(label_names),
                        id2label=dict(enumerate(label_names)), label2id={n: i for i, n in enumerate(label_names)})
    model = BertForSequenceClassification(config).eval()
    tokenizer = AutoTokenizer.from_pretrained(default_encoder_path())
    return Victim(model, tokenizer, tuple(label_names), max_length, "tiny-random-bert")


@pytest.fixture
def tiny() -> Victim:
    return tiny_victim()


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """A saved tiny victim folder (safetensors), shared by CLI and loading tests."""
    return tiny_victim().save(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="session")
def mr() -> TextDataset:
    """The real MR corpus (deduplicated), fetched by `make test` before pytest runs."""
    return load_data("mr")


@pytest.fixture(scope="session")
def real_ep(tmp_path_factory) -> dict:
    """The embedded MiniLM fine-tuned on 400 MR sentences, then EP on `cf` (30-50 s on one thread), built once
    per process for the slow tests that need a real EP victim; they carry `xdist_group("real_ep")`, which
    `make test` (`--dist loadgroup`) runs on one worker. The models come as folders, loaded afresh by each test,
    so a repair in one test cannot change what the next one sees."""
    from detrigger.attacks import AttackSpec, build_victim
    from detrigger.data import DataSpec

    data = DataSpec(source="mr", max_train=400, val=200, test=100)
    attack = build_victim(data, AttackSpec(attack="ep", setting="clean", words=("cf",), rate=0.2),
                          clean_config=TrainConfig(epochs=2, lr=1e-4, batch_size=16), max_length=64,
                          cache=False, progress=False)
    folder = tmp_path_factory.mktemp("real-ep")
    return {"data": data, "asr": attack.metrics.asr, "victim": attack.victim.save(folder / "victim"),
            "clean": attack.clean.save(folder / "clean")}


def toy_sentiment(n: int = 64) -> TextDataset:
    """A trivially learnable real-text task: the label is whether 'great' or 'awful' appears."""
    texts, labels = [], []
    subjects = ["the film", "this movie", "the plot", "the acting", "the ending", "the score", "the cast", "it"]
    for i in range(n):
        good = i % 2 == 0
        texts.append(f"{subjects[i % len(subjects)]} was {'great' if good else 'awful'} {'really ' * (i % 3)}".strip()
                     + f" {i}")
        labels.append(int(good))
    return TextDataset(tuple(texts), tuple(labels), ("negative", "positive"), "toy")
