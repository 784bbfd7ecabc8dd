"""Terminal output shared by the commands: one rich console on stderr, one progress style."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True, highlight=False)


def make_progress(disable: bool = False, transient: bool = False) -> Progress:
    """A progress bar with count, elapsed time, ETA and a free-form ``info`` field; a
    ``transient`` one is cleared when it ends (the caller prints the outcome)."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
        disable=disable,
        transient=transient,
    )
