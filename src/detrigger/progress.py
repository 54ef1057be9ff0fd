"""What a run reports: the one progress bar (training, scan, evaluation; tqdm on stderr), its log lines (kept
to be saved with what it made) and its figures in percent."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from tqdm.auto import tqdm


def progress_bar(total: int, desc: str, unit: str, progress: bool | None) -> tqdm:
    """A bar that `progress=None` shows only when stderr is a terminal (so logs and pipes stay clean);
    True / False force it on / off. It is cleared when closed."""
    return tqdm(total=total, desc=desc, unit=unit, disable=(not progress) if progress is not None else None,
                dynamic_ncols=True, leave=False)


@contextlib.contextmanager
def captured_log(name: str = "detrigger") -> Iterator[list[str]]:
    """The INFO-and-above lines logged under `name` while the block runs, timestamped (a run's `train.log`)."""
    lines: list[str] = []
    handler = logging.Handler(logging.INFO)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    handler.emit = lambda record: lines.append(handler.format(record))  # type: ignore[method-assign]
    logging.getLogger(name).addHandler(handler)
    try:
        yield lines
    finally:
        logging.getLogger(name).removeHandler(handler)


def pct(x: float | None) -> str:
    """A fraction in percent with two decimals; '-' for none."""
    return "-" if x is None else f"{100 * x:.2f}"
