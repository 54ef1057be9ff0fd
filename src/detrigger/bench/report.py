"""Reports from a run folder's records: results.json / results.csv (a row per cell), results.md (mean ± std
per data set, attack, defence and clean fraction) and PNG plots. `detrigger report RUN_DIR` rebuilds them;
`--into DOC` also puts the table into a Markdown document between its markers (how docs/results.md is made)."""

from __future__ import annotations

import csv
import io
import json
import logging
import re
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from detrigger.argfields import POSITIONAL
from detrigger.bench.records import CellRecord, cell_key, load_records
from detrigger.bench.spec import BASELINES, BenchSpec
from detrigger.errors import DetriggerError
from detrigger.io import write_json

METRICS = ("cacc", "asr", "trigger_effect", "ra", "target_rate", "asr_floor", "reverse_effect")
log = logging.getLogger(__name__)

SAVED = ("saved_cacc", "saved_asr", "saved_trigger_effect")  # the saved folder, as plain transformers runs it
CSV_COLUMNS = ("data", "attack", "defence", "method", "clean_fraction", "seed", "status", *METRICS, *SAVED, "seconds",
               "peak_memory_mb", "clean_count", "rho", "error")


def write_report(run_dir: str | Path, title: str | None = None) -> str:
    """Write results.json, results.csv, results.md and plots/ in `run_dir`; return the Markdown table."""
    run_dir = Path(run_dir)
    records = list(load_records(run_dir).values())
    spec_file = run_dir / "spec.json"
    spec = json.loads(spec_file.read_text()) if spec_file.is_file() else {}
    keys: dict[str, str] = {}
    if spec:  # records of cells the spec no longer has (a changed default, a removed row) stay out
        keys = {cell_key(bench, cell): cell.defence for bench in [BenchSpec(**spec)] for cell in bench.cells()}
        stale = sum(r.key not in keys for r in records)
        if stale:
            log.info("%s: %d records of cells not in the current spec are left out", run_dir, stale)
        # named as the spec names them now (a row renamed once its config became the default keeps its cells)
        records = [r.model_copy(update={"defence": keys[r.key]}) for r in records if r.key in keys]
    if not records:
        raise DetriggerError(f"{run_dir}: no records (run `detrigger bench SPEC --out {run_dir}` first)")
    title = title or spec.get("name")
    ranks = _defence_ranks(spec)  # rows follow the spec's order of defences
    records.sort(key=lambda r: (r.data, r.attack, r.clean_fraction or 0, ranks.get(r.defence, len(ranks)),
                                r.defence, r.seed))
    write_json(run_dir / "results.json", [r.as_dict() for r in records])
    _write_text(run_dir / "results.csv", _csv(records))
    table = markdown(records, title)
    if keys:
        done = sum(r.status == "done" for r in records)
        table += f"\n\n{done} of {len(keys)} cells of the spec recorded (seeds by attack: {_seeds(records)})."
    _write_text(run_dir / "results.md", table + "\n")
    plot(records, run_dir / "plots")
    return table


class ReportOptions(BaseModel):
    """What `detrigger report` is given."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    run_dir: str = Field(description="the folder given to bench --out", json_schema_extra=POSITIONAL)
    into: str | None = Field(None, title="DOC", description="also put the table into this Markdown file between its "
                             "'<!-- detrigger report RUN_DIR -->' and '<!-- /detrigger report -->' markers")

    def run(self) -> str:
        """The reports of the run folder rebuilt from its records (`write_report`), and with `into` the table put
        into that document (`splice`); returns the table."""
        if not Path(self.run_dir).is_dir():
            raise DetriggerError(f"{self.run_dir}: no such run folder")
        table = write_report(self.run_dir)
        if self.into:
            splice(self.into, self.run_dir, table)
        return table


def run_text(records: dict[str, CellRecord], run_dir: Path) -> str:
    """What `detrigger bench` prints once a run is over: the table it wrote (results.md), how many cells are
    recorded and failed, and where the reports are."""
    failed = sum(r.status == "failed" for r in records.values())
    return ((run_dir / "results.md").read_text().rstrip() + f"\n\n{len(records)} cells recorded in {run_dir}/cells "
            f"({failed} failed); reports: {run_dir}/results.md, results.csv, results.json, plots/")


def _seeds(records: list[CellRecord]) -> str:
    """Which seeds each attack has records for, e.g. 'badnet 0, 1; ep 0'."""
    by_attack: dict[str, set[int]] = defaultdict(set)
    for r in records:
        if r.status == "done":
            by_attack[r.attack].add(r.seed)
    return "; ".join(f"{a} {', '.join(map(str, sorted(s)))}" for a, s in by_attack.items())


def splice(doc: str | Path, run_dir: str | Path, table: str) -> None:
    """Replace what stands between `<!-- detrigger report RUN_DIR -->` and `<!-- /detrigger report -->` in
    `doc` with `table` (its heading dropped): the docs quote the runner, never a hand-copied number."""
    doc = Path(doc)
    start, end = f"<!-- detrigger report {Path(run_dir).as_posix()} -->", "<!-- /detrigger report -->"
    text = doc.read_text() if doc.is_file() else ""
    i = text.find(start)
    j = text.find(end, i + len(start)) if i >= 0 else -1
    if j < 0:
        raise DetriggerError(f"{doc}: no '{start}' ... '{end}' markers to put the table between")
    body = "\n".join(line for line in table.splitlines() if not line.startswith("### ")).strip()
    _write_text(doc, text[:i + len(start)] + "\n" + body + "\n" + text[j:])


def _defence_ranks(spec: dict[str, Any]) -> dict[str, int]:
    """Table position of each defence name: the baselines, then the spec's defences in its order."""
    names = list(BASELINES)
    for d in spec.get("defences", []):
        names.append(d.get("name") or d["method"])
    return {name: i for i, name in enumerate(names)}


def _csv(records: list[CellRecord]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in records:
        writer.writerow({**r.as_dict(), "rho": r.rho})
    return out.getvalue()


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def groups(records: list[CellRecord]) -> dict[tuple, list[CellRecord]]:
    """Finished records by (data, attack, defence, clean fraction), in the records' (table) order."""
    out: dict[tuple, list[CellRecord]] = defaultdict(list)
    for r in records:
        if r.status == "done":
            out[(r.data, r.attack, r.defence, r.clean_fraction)].append(r)
    return out


def mean_std(values: list[float | None], scale: float = 100) -> tuple[float, float] | None:
    values = [scale * v for v in values if v is not None]
    if not values:
        return None
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _fmt(stat: tuple[float, float] | None, digits: int = 2) -> str:
    return "-" if stat is None else f"{stat[0]:.{digits}f} ± {stat[1]:.{digits}f}"


def markdown(records: list[CellRecord], title: str | None = None) -> str:
    """One table per data set: mean ± std over seeds, in percent; time is the repair's wall time. The saved
    folder's columns are the model as `repair` writes it, which plain transformers runs identically."""
    lines = [f"### {title}", ""] if title else []
    by_data: dict[str, list] = defaultdict(list)
    for key, rs in groups(records).items():
        by_data[key[0]].append((key, rs))
    for data, rows in by_data.items():
        # the reverse effect: only where some record measured it (records since 2026-11-30)
        shown = ["cacc", "asr", "trigger_effect", "ra", "asr_floor"]
        if any(r.reverse_effect is not None for _, rs in rows for r in rs):
            shown.insert(3, "reverse_effect")
        reverse = "reverse effect | " if "reverse_effect" in shown else ""
        lines += [f"**{data}** (percent, mean ± std over seeds; trigger effect = ASR − the same model's target "
                  "rate on the untriggered texts" + ("; reverse effect = the target-label texts the trigger moves "
                                                     "off the target, minus those off it without" if reverse else "")
                  + ")", "",
                  f"| attack | defence | clean | seeds | CACC | ASR | trigger effect | {reverse}RA | ASR floor "
                  "| saved folder: CACC / trigger effect | repair time (s) |",
                  "|---|---|---|---|---|---|---|---|---|---|---|" + "---|" * bool(reverse)]
        for (_, attack, defence, fraction), rs in rows:
            secs = mean_std([r.seconds for r in rs], scale=1)
            clean = "-" if fraction is None else f"{100 * fraction:g}%"
            lines.append(f"| {attack} | {defence} | {clean} | {len(rs)} | "
                         + " | ".join(_fmt(mean_std([getattr(r, m) for r in rs])) for m in shown)
                         + f" | {_saved(rs)} | {'-' if secs is None else f'{secs[0]:.0f}'} |")
        lines.append("")
        lines += _stage_table(rows)
    bad = [r for r in records if r.status == "failed"]
    if bad:
        lines += [f"{len(bad)} failed cell(s) (rerun with --retry-failed):", ""]
        lines += [f"- {r.attack} / {r.defence} / seed {r.seed}: {r.error[:200]}" for r in bad]
    return "\n".join(lines).rstrip()


def _saved(rs: list[CellRecord]) -> str:
    """Mean CACC / trigger effect of the folder `repair` saves ('-' for records made before it was measured;
    over the seeds that measured it, named, when only some did)."""
    cacc, effect = mean_std([r.saved_cacc for r in rs]), mean_std([r.saved_trigger_effect for r in rs])
    if cacc is None:
        return "-"
    measured = [r.seed for r in rs if r.saved_cacc is not None]
    part = "" if len(measured) == len(rs) else f" (seed{'s' * (len(measured) > 1)} {', '.join(map(str, measured))})"
    return f"{cacc[0]:.2f} / {'-' if effect is None else f'{effect[0]:.2f}'}{part}"


def _stage_table(rows: list[tuple[tuple, list[CellRecord]]]) -> list[str]:
    """Mean wall seconds per stage and the teacher's held-out accuracy, for the defences that report stages
    (the distillation family): where a repair's time goes."""
    rows = [(key, rs) for key, rs in rows if any(r.stages for r in rs)]
    if not rows:
        return []
    names = list(dict.fromkeys(name for _, rs in rows for r in rs for name in r.stages))
    lines = ["Repair stages (wall seconds, mean over seeds) and the teacher's accuracy on the defender's "
             "held-out clean texts:", "",
             "| attack | defence | seeds | " + " | ".join(names) + " | teacher held-out acc. |",
             "|---|---|---|" + "---|" * (len(names) + 1)]
    for (_, attack, defence, _), rs in rows:
        cells = [mean_std([r.stages.get(name) for r in rs], scale=1) for name in names]
        teacher = mean_std([step.teacher_val_accuracy for r in rs for step in (r.details or {}).values()])
        lines.append(f"| {attack} | {defence} | {len(rs)} | " + " | ".join(
            "-" if c is None else f"{c[0]:.1f}" for c in cells) + f" | {_fmt(teacher)} |")
    return lines + [""]


def plot(records: list[CellRecord], out: Path) -> list[Path]:
    """Per-attack bars of CACC and ASR per defence, an ASR-vs-CACC scatter and the Fine-mixing rho curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    written = []
    table = groups(records)
    for data, attack in sorted({(k[0], k[1]) for k in table}):
        rows = [(k[2] if k[3] is None else f"{k[2]} ({100 * k[3]:g}%)", rs) for k, rs in table.items()
                if k[:2] == (data, attack)]
        fig, ax = plt.subplots(figsize=(max(5, 0.9 * len(rows) + 2), 3.6))
        x = range(len(rows))
        for offset, metric, colour in ((-0.2, "cacc", "tab:blue"), (0.2, "asr", "tab:red")):
            stats = [mean_std([getattr(r, metric) for r in rs]) or (0.0, 0.0) for _, rs in rows]
            ax.bar([i + offset for i in x], [s[0] for s in stats], 0.4, yerr=[s[1] for s in stats],
                   label=metric.upper(), color=colour, capsize=2)
        ax.set_xticks(list(x), [name for name, _ in rows], rotation=30, ha="right")
        ax.set_ylabel("%")
        ax.set_ylim(0, 100)
        ax.set_title(f"{data} / {attack}")
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
        written.append(_save(fig, out / f"bars-{safe_name(data)}-{safe_name(attack)}.png"))

    fig, ax = plt.subplots(figsize=(6, 4.2))
    defences = sorted({k[2] for k in table})
    markers = dict(zip(sorted({k[1] for k in table}), "osD^vP*X"))
    for i, defence in enumerate(defences):
        label = defence
        for key, rs in table.items():
            if key[2] == defence:
                cacc, asr = mean_std([r.cacc for r in rs]), mean_std([r.asr for r in rs])
                ax.scatter(cacc[0], asr[0], color=plt.cm.tab20(i % 20), marker=markers[key[1]], s=40, label=label)
                label = None
    ax.set_xlabel("CACC (%)")
    ax.set_ylabel("ASR (%)")
    ax.set_title("ASR vs CACC (marker: attack)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    written.append(_save(fig, out / "asr-vs-cacc.png"))

    curves = [(r, step.curve) for r in records if r.status == "done"  # a rho curve, not fine-pruning's ratios
              for step in (r.details or {}).values() if step.rho is not None and step.curve]
    if curves:
        fig, ax = plt.subplots(figsize=(5, 3.6))
        for r, curve in curves:
            ax.plot([p["rho"] for p in curve], [100 * p["val_accuracy"] for p in curve], marker="o", alpha=0.7,
                    label=f"{r.attack} / {r.defence} / s{r.seed}")
        ax.set_xlabel("rho (kept share of the fine-tuned change)")
        ax.set_ylabel("held-out clean accuracy (%)")
        ax.set_title("Fine-mixing rho curve (clean data only)")
        ax.legend(fontsize=6)
        written.append(_save(fig, out / "rho-curve.png"))
    return written


def safe_name(text: str) -> str:
    """A file-name part from any data source or attack name (`data/x.csv` -> `data_x.csv`)."""
    return re.sub(r"[^A-Za-z0-9.-]+", "_", text).strip("_.") or "_"


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
