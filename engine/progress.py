"""The Rich progress bar gcomp shows on stderr (completion, training); silent when disabled."""
from __future__ import annotations


class ProgressBar:
    """`ProgressBar(enabled, total, label, *extra_columns)`; advance(n, **fields), close()."""

    def __init__(self, enabled: bool, total: int, label: str = "completing", *extra_columns, completed: int = 0,
                 **fields):
        self.p = None
        if enabled and total:
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                       TimeRemainingColumn)

            self.p = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), *extra_columns,
                              TimeElapsedColumn(), TimeRemainingColumn(), console=Console(stderr=True),
                              transient=False)
            self.task = self.p.add_task(label, total=total, completed=completed, **fields)
            self.p.start()

    def advance(self, n: int = 1, **fields) -> None:
        if self.p:
            self.p.update(self.task, advance=n, **fields)

    def update(self, **fields) -> None:
        """Set the bar's position (completed=N) and its extra columns' fields."""
        if self.p:
            self.p.update(self.task, **fields)

    def close(self) -> None:
        if self.p:
            self.p.stop()
