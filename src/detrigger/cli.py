"""The `detrigger` command line: parses, calls the library, prints. Bad input exits with code 2.

A command's options are added once it is chosen (`_Commands`), after `--threads` has set torch's thread count:
most are made from the fields of the config models that own them (`argfields.add_fields`: flag, type, choices,
help and default from the field), and pydantic checks the values when the command builds its config from them."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from detrigger import __version__
from detrigger.argfields import add_fields, add_recipe, given, typed
from detrigger.cpus import thread_env
from detrigger.errors import DetriggerError

log = logging.getLogger("detrigger")
SCAN_EXIT = "exit status: 0 no evidence of a backdoor, 1 flagged as backdoored, 2 error (the clamscan convention)"
SOURCE = "a built-in corpus, a file, a saved HF folder or hf:NAME"
PARTS = ["test", "val", "train", "all"]


def _print(lines: Iterable[str]) -> int:
    for line in lines:
        print(line)
    return 0


def _texts(args: argparse.Namespace, source: str, victim, part: str | None = None, default: str = "test"):
    """Labelled texts of `source` on the model's labels: `part`, else `default` of a built-in corpus and all of
    a file, split as recorded with the model."""
    from detrigger.data import default_part, load_part

    return load_part(source, part or default_part(source, default), label_names=victim.label_names,
                     recorded=victim.info.get("data"), **given(args, "DataSpec"))


def _load(args: argparse.Namespace, name: str):
    """A model folder, hub id or LoRA adapter (merged into its base), labels renamed by --label-map, on --device."""
    import detrigger.defences  # noqa: F401  (the input transforms a repaired model may ship)
    from detrigger.models import LoadOptions

    return typed(LoadOptions, args).load(name, args.device)


def _trigger(args: argparse.Namespace, model: str, victim):
    """The evaluation trigger and target: the options', else the model's attack card's. Never a defence's."""
    from detrigger.attacks import evaluation_trigger
    from detrigger.triggers import TriggerOptions

    return evaluation_trigger(model, victim.label_names, typed(TriggerOptions, args))


def _out(args: argparse.Namespace) -> Path:
    """The output folder, refused now if it exists without --overwrite (before minutes of work)."""
    from detrigger.io import check_output_dir

    check_output_dir(Path(args.out), args.overwrite)
    return Path(args.out)


def _show(args: argparse.Namespace, record: dict, text: str, out: Path | None = None) -> int:
    """A command's result: `text`, or with --json its `record` and the folder `out` it saved, with the files."""
    saved = {"out": str(out), "files": sorted(p.name for p in out.iterdir())} if out is not None else {}
    print(json.dumps({**record, **saved}, indent=2) if args.json else text)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from detrigger.data import data_spec, load_splits
    from detrigger.training import TrainConfig
    from detrigger.training.recipe import train_classifier

    out = _out(args)
    spec = data_spec(args.data, **given(args, "DataSpec"))
    config = typed(TrainConfig, args, epochs=args.epochs, lr=args.lr, device=args.device,
                   seed=spec.seed if args.train_seed is None else args.train_seed)
    splits = load_splits(spec)
    if not args.json:
        print(f"data {spec.source}: " + ", ".join(f"{k} {v}" for k, v in splits.sizes().items()))
    return _show(args, *train_classifier(spec, config, out, overwrite=args.overwrite, encoder=args.encoder,
                                         max_length=args.max_length, progress=args.progress, splits=splits), out)


def cmd_attack(args: argparse.Namespace) -> int:
    from detrigger.attacks import attack_spec, build_victim
    from detrigger.attacks.attack import BuildOptions
    from detrigger.data import data_spec

    out = _out(args)
    train = {k: v for k in ("epochs", "lr", "device") if (v := getattr(args, k)) is not None}
    spec = attack_spec({**given(args, "AttackSpec"), "seed": args.seed}, train)
    data, build = data_spec(args.data, **given(args, "DataSpec")), typed(BuildOptions, args)
    result = build_victim(data, spec, clean_config=build.clean_config(args.seed, args.device), encoder=args.encoder,
                          max_length=args.max_length, cache=not build.no_cache, progress=args.progress)
    text = result.save(out, args.overwrite)
    return _show(args, result.record(), text, out)


def cmd_repair(args: argparse.Namespace) -> int:
    from detrigger.defences import defender_clean, repair
    from detrigger.defences.base import RepairOptions

    o, out = typed(RepairOptions, args), _out(args)
    train = {k: v for k in ("epochs", "lr", "device") if (v := getattr(args, k)) is not None}
    config = o.step_config({"rho": args.rho, "mask": args.mask, "top_n": args.top_n, "seed": args.seed}, train)
    victim = _load(args, args.victim)
    clean, pool = defender_clean(o, victim, **given(args, "DataSpec"))
    if not args.json:
        print(o.clean_text(clean, pool, victim))
    result = repair(victim, clean, method=o.method, reference=o.reference, config=config,
                    clean_fraction=len(clean) / pool)
    record = result.save(out, suspect=str(Path(args.victim).resolve()), clean_data=o.clean,
                         ship_purifier=o.ship_purifier, overwrite=args.overwrite)
    return _show(args, record, result.saved_text(record, out), out)


def cmd_eval(args: argparse.Namespace) -> int:
    from detrigger.evaluation.run import run_eval
    from detrigger.models import LoadOptions

    victim = _load(args, args.model)
    trigger, target = _trigger(args, args.model, victim)
    return _show(args, *run_eval(victim, args.data, model=args.model, split=args.split, trigger=trigger, target=target,
                                 reference=args.reference, allow_pickle=typed(LoadOptions, args).allow_pickle,
                                 progress=args.progress, **given(args, "DataSpec")))


def cmd_plot_representations(args: argparse.Namespace) -> int:
    from detrigger.defences.distillation import split_text
    from detrigger.evaluation.representations import PictureOptions, draw_picture

    options = typed(PictureOptions, args)
    models = {Path(folder).name: _load(args, folder) for folder in args.models}
    first = next(iter(models.values()))
    trigger, target = _trigger(args, args.models[0], first)
    if trigger is None:
        raise DetriggerError("give --trigger-word or --trigger-sentence (the first model has no attack card)")
    seed = args.seed if args.seed is not None else 0
    written = draw_picture(models, _texts(args, options.data, first), trigger, target, split_text, options, seed)
    return _print(f"wrote {path}" for path in written)


def cmd_scan(args: argparse.Namespace) -> int:
    """Exit status 0 / 1 / 2 (SCAN_EXIT), so a pipeline can gate on it; a crash is 2, never a verdict."""
    from detrigger.scan import ScanConfig, scan

    try:
        config = typed(ScanConfig, args)
        victim = _load(args, args.model)
        report = scan(victim, _texts(args, args.clean, victim, default="val"), reference=args.reference,
                      config=config, progress=args.progress)  # the held-out split
    except DetriggerError:
        raise
    except Exception:
        log.exception("scan failed")
        return 2
    _show(args, report.as_dict(), report.text())
    return 1 if report.verdict == "backdoored" else 0


def cmd_filter(args: argparse.Namespace) -> int:
    """An input-level defence in front of the model: fitted on --clean (threshold at --frr), applied to --data;
    FRR and CACC, and with a trigger (options or the attack card: evaluation only) FAR and ASR."""
    from detrigger.filters import FilterOptions, run_filter

    options = typed(FilterOptions, args)
    config = options.filter_config()  # a bad option fails now, before the model loads
    if options.out:
        _out(args)
    victim = _load(args, args.model)
    trigger, target = _trigger(args, args.model, victim)
    return _show(args, *run_filter(victim, options, config, model=args.model, trigger=trigger, target=target,
                                   overwrite=args.overwrite, progress=args.progress, **given(args, "DataSpec")))


def cmd_bench(args: argparse.Namespace) -> int:
    from detrigger.bench import load_spec, run_bench
    from detrigger.bench.report import run_text
    from detrigger.bench.spec import RunOptions

    out = Path(args.out)
    records = run_bench(load_spec(args.spec), out, **typed(RunOptions, args).model_dump(),
                        progress=args.progress, overwrite=args.overwrite)
    print(run_text(records, out))
    return 1 if any(r.status == "failed" for r in records.values()) else 0


def cmd_report(args: argparse.Namespace) -> int:
    from detrigger.bench.report import rebuild_report

    return _print([rebuild_report(args.run_dir, args.into)])


class _Commands(argparse._SubParsersAction):
    """The commands: the one chosen gets its options (`_options`) once --threads has set torch's thread count, as
    the config models they are made from load torch; `detrigger --help` loads none."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        if namespace.threads is not None and namespace.threads < 1:
            raise DetriggerError(f"--threads must be at least 1, got {namespace.threads}")
        thread_env(namespace.threads)
        if values[0] in self.choices:  # else argparse names the unknown command
            _options(self.choices[values[0]], values[0])
        super().__call__(parser, namespace, values, option_string)


COMMANDS = {  # name: (help, what it does, the options it shares with others (`_shared`), more parser settings)
    "data": ("list, fetch and inspect data sets", None, ()),
    "train": ("fine-tune a pre-trained encoder on a data set and save the classifier", cmd_train,
              ("data", "encoder", "device", "overwrite", "progress", "json")),
    "attack": ("build a backdoored victim with a registered attack and measure it", cmd_attack,
               ("data", "encoder", "device", "overwrite", "progress", "json")),
    "repair": ("repair a suspect model with a small clean subset (default auto)", cmd_repair,
               ("data", "model", "device", "overwrite", "json")),
    "split": ("show MBTSAD's token splitting of a text (what its teacher is trained on)", None, ()),
    "eval": ("CACC of a model on a data set; ASR, RA and trigger effect given a trigger", cmd_eval,
             ("data", "trigger", "model", "device", "json", "progress")),
    "plot": ("figures: the representation picture (PCA / t-SNE)", None, ()),
    "scan": ("is a model backdoored? rank candidate trigger tokens and the target label", cmd_scan,
             ("data", "model", "device", "json", "progress"), {"epilog": SCAN_EXIT}),
    "filter": ("input-level defences in front of a model: FRR, FAR, CACC and ASR on the texts they let through",
               cmd_filter, ("trigger", "data", "model", "device", "overwrite", "json", "progress")),
    "bench": ("run a YAML experiment spec's grid (resumable) and write tables and plots", cmd_bench,
              ("overwrite", "progress")),
    "report": ("rebuild results.md/csv/json and plots of a bench run folder from its records", cmd_report, ()),
}


def _shared(p: argparse.ArgumentParser, *shared: str) -> argparse.ArgumentParser:
    """The options a command shares with others: `data` (file columns, split), `model` (loading), `trigger` (the
    evaluation trigger), `encoder` (a new model's), and `device`, `overwrite`, `json`, `progress`."""
    from detrigger.data import DataSpec
    from detrigger.triggers import TriggerOptions

    add = p.add_argument
    if "data" in shared:
        add_fields(p, DataSpec, "text_column", "label_column", "seed", "val", "test")
    if "model" in shared or "pickle" in shared:  # pickle: --allow-pickle alone
        from detrigger.models import LoadOptions

        add_fields(p, LoadOptions, *(("label_map", "base", "allow_pickle") if "model" in shared else ("allow_pickle",)))
    if "trigger" in shared:  # the evaluation trigger: never given to a defence
        add_fields(p, TriggerOptions)
    if "encoder" in shared:
        from detrigger.models.victim import DEFAULT_MAX_LENGTH

        add("--encoder", help="pre-trained encoder folder or hub id org/name (offline: only if in the Hugging Face "
            "cache; default: embedded MiniLM-L6)")
        add_fields(p, DataSpec, "max_train")
        add("--max-length", type=int, default=DEFAULT_MAX_LENGTH,
            help=f"truncation length in tokens (default {DEFAULT_MAX_LENGTH})")
    if "device" in shared:
        add("--device", default=None, help="cuda, mps or cpu (default: best available)")
    for flag, text in (("overwrite", "replace an existing output folder"), ("json", "print the result as JSON")):
        if flag in shared:
            add(f"--{flag}", action="store_true", help=text)
    if "progress" in shared:  # args.progress: False, or None (shown on a terminal)
        add("--no-progress", dest="progress", action="store_const", const=False, help="no progress bar (shown only on "
            "a terminal anyway)")
    return p


def _options(p: argparse.ArgumentParser, command: str) -> None:
    """The options of `command` (its parser `p`), its shared ones first."""
    add = _shared(p, *COMMANDS[command][2]).add_argument
    if command == "data":
        from detrigger.data import corpora_table, data_spec, describe, fetch_corpora

        data = p.add_subparsers(dest="data_command", required=True, metavar="ACTION")
        data.add_parser("list", help="the built-in offline corpora").set_defaults(
            func=lambda a: _print([corpora_table()]))
        fetch = data.add_parser("fetch", help="download built-in corpora into the cache (once; sha256-checked)")
        fetch.set_defaults(func=lambda a: _print(fetch_corpora(a.names)))
        fetch.add_argument("names", nargs="*", help="corpora to fetch (default: all)")
        show = _shared(data.add_parser("show", help="sizes, label balance, split sizes and a few rows of a data set"),
                       "data")
        show.set_defaults(func=lambda a: _print([describe(data_spec(a.name, **given(a, "DataSpec")), a.rows)]))
        show.add_argument("name", help=SOURCE)
        show.add_argument("--rows", type=int, default=5, help="rows to print (default 5)")
    elif command == "train":
        from detrigger.training import TrainConfig

        add("--data", required=True, help=SOURCE)
        add("--out", required=True, help="output model folder (written atomically)")
        add("--epochs", type=int, default=2, help="epochs (default 2)")
        add("--lr", type=float, default=5e-5, help="peak learning rate (default 5e-5)")
        add("--train-seed", type=int, default=None, help="training seed (default: the split seed)")
        add_fields(p, TrainConfig, "batch_size", "precision")
    elif command == "attack":
        from detrigger.attacks import ATTACKS, AttackSpec
        from detrigger.attacks.attack import BuildOptions

        p.set_defaults(seed=0)
        add("--data", required=True, help=SOURCE)
        add("--out", required=True, help="output victim folder (model + attack.json)")
        add_fields(p, AttackSpec, "attack", help="one of " + ", ".join(ATTACKS))
        add_fields(p, AttackSpec, "setting", "sentence", "target", "rate", "label_mode", "times", "negative_rate",
                   "ripple_lambda", "words", "chars")
        add_recipe(p, AttackSpec, help="{}; both settings")
        add_fields(p, AttackSpec, "lora_rank", flag="--lora", metavar="RANK")
        add_fields(p, BuildOptions)
    elif command == "repair":
        from detrigger.defences import DEFENCES, DefenceConfig
        from detrigger.defences.base import RepairOptions
        from detrigger.defences.epur import EpurConfig
        from detrigger.defences.mixing import MixingConfig

        add("victim", help="suspect model folder (safetensors), hub id (org/name) or LoRA adapter folder")
        add_fields(p, RepairOptions, "method", help=f"{', '.join(DEFENCES)}, or a pipeline joined by + "
                   "(epur+finemixing) (default auto: scan, unlearn, re-scan)")
        add_fields(p, RepairOptions, "clean", "clean_fraction", "clean_count", "reference", "out", "config")
        add_fields(p, MixingConfig, "rho", "mask")
        add_fields(p, EpurConfig, "top_n")
        add_recipe(p, DefenceConfig)
        add_fields(p, RepairOptions, "ship_purifier")
    elif command == "split":
        from detrigger.defences.distillation import split_copies

        p.set_defaults(func=lambda a: _print(split_copies(a.text, a.copies, probability=a.probability,
                                                          min_length=a.min_length, seed=a.seed)))
        add("text", help="the text to split")
        add("--probability", type=float, default=1.0, help="chance that a word is split (default 1)")
        add("--min-length", type=int, default=2, help="shortest word that is split (default 2)")
        add("--copies", type=int, default=1, help="split versions to print (default 1)")
        add("--seed", type=int, default=0, help="seed (default 0)")
    elif command == "eval":
        add("model", help="model folder (safetensors)")
        add("data", help=SOURCE)
        add("--split", choices=PARTS, help="default: test of a built-in corpus, all of a file")
        add("--reference", help="a clean model: its ASR on the same texts is the floor")
    elif command == "plot":
        from detrigger.evaluation.representations import PictureOptions

        plot = p.add_subparsers(dest="plot_command", required=True, metavar="FIGURE")
        p = _shared(plot.add_parser("representations", help="2-D PCA and t-SNE of sentence vectors of clean, "
                                    "token-split and triggered text, a panel per model"),
                    "trigger", "data", "pickle", "device")
        p.set_defaults(func=cmd_plot_representations)
        p.add_argument("models", nargs="+", help="model folders (e.g. the victim, an MBTSAD teacher, the repaired "
                       "model)")
        add_fields(p, PictureOptions)
    elif command == "scan":
        from detrigger.scan import ScanConfig

        add("model", help="model folder (safetensors)")
        add("--clean", required=True, help="labelled clean data: a built-in corpus (its validation split) or a file")
        add("--reference", help="pre-trained encoder folder: adds embedding-drift evidence")
        add_fields(p, ScanConfig, "samples", "candidates", "rounds", "phrase_words", "threshold")
    elif command == "filter":
        from detrigger.filters import FILTERS, FilterOptions

        add("model", help="model folder (safetensors)")
        add_fields(p, FilterOptions, "method", help="one of " + ", ".join(FILTERS))
        add_fields(p, FilterOptions)
    elif command == "bench":
        from detrigger.bench.spec import RunOptions

        add("spec", help="experiment spec (YAML): data, attacks, defences, clean_fractions, seeds")
        add("--out", required=True, help="run folder: one record per cell, results.md/csv/json, plots/")
        add_fields(p, RunOptions)
    elif command == "report":
        add("run_dir", help="the folder given to bench --out")
        add("--into", metavar="DOC", help="also put the table into this Markdown file between its "
            "'<!-- detrigger report RUN_DIR -->' and '<!-- /detrigger report -->' markers")


def build_parser() -> argparse.ArgumentParser:
    """The commands and their help lines; a command's options come when it is chosen (`_Commands`)."""
    parser = argparse.ArgumentParser(prog="detrigger", description="Find and remove backdoors in fine-tuned "
                                     "transformer text classifiers, offline.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--threads", type=int, default=None, metavar="N", help="CPU threads for torch (default: "
                        "OMP_NUM_THREADS if set, else the CPUs this process is given: affinity mask, cgroup quota)")
    parser.add_argument("--version", action="version", version=f"detrigger {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", action=_Commands)
    for name, (help, func, _, *kw) in COMMANDS.items():
        sub.add_parser(name, help=help, **(kw[0] if kw else {})).set_defaults(func=func)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    try:
        args = build_parser().parse_args(argv)  # --threads is applied as the command is chosen (_Commands)
        log.setLevel(logging.DEBUG if args.verbose else logging.INFO)
        return args.func(args)
    except DetriggerError as exc:
        print(f"detrigger: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("detrigger: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
