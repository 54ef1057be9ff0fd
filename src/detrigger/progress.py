"""The one progress bar for long steps (training, scan, evaluation): tqdm on stderr."""

from __future__ import annotations

from tqdm.auto import tqdm


def progress_bar(total: int, desc: str, unit: str, progress: bool | None) -> tqdm:
    """A bar that `progress=None` shows only when stderr is a terminal (so logs and pipes stay clean);
    True / False force it on / off. It is cleared when closed."""
    return tqdm(total=total, desc=desc, unit=unit, disable=(not progress) if progress is not None else None,
                dynamic_ncols=True, leave=False)
