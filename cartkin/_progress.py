"""A progress display for long work (large simulations, fits), silent when disabled."""

from __future__ import annotations

import contextlib
import sys


@contextlib.contextmanager
def progress_bar(total: int | None, description: str, enabled: bool = True):
    """Context manager yielding ``advance(n, status=None)``; a rich progress bar on stderr when
    enabled (``total=None``: no known end; ``status`` is shown after the description)."""
    if not enabled:
        yield lambda n=1, status=None: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    console = Console(file=sys.stderr)
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as bar:
        task = bar.add_task(description, total=total)

        def advance(n=1, status=None):
            bar.advance(task, n)
            if status is not None:
                bar.update(task, description=f"{description}: {status}")

        yield advance
