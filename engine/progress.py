"""The progress gcomp shows on stderr (completion, training): a Rich bar on a terminal; without one (CI logs,
nohup, cron, Ray workers' logs), where Rich would print only its last frame at the end, one plain line every
PLAIN_EVERY_S seconds (count, rate, ETA). Silent when disabled."""
from __future__ import annotations

import os
import sys
import time


def _every_s(default: float = 10.0) -> float:
    """Seconds between plain lines: GCOMP_PROGRESS_EVERY, or 10 (a value that is not a number is ignored)."""
    try:
        return max(0.0, float(os.environ.get("GCOMP_PROGRESS_EVERY", default)))
    except ValueError:
        return default


PLAIN_EVERY_S = _every_s()


def _duration(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else (f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s")


class ProgressBar:
    """`ProgressBar(enabled, total, label, *extra_columns)`; advance(n, **fields), close()."""

    def __init__(self, enabled: bool, total: int, label: str = "completing", *extra_columns, completed: int = 0,
                 **fields):
        self.p = None
        self.plain = False
        if enabled and total and not sys.stderr.isatty():
            self.plain, self.label, self.total = True, label, total
            self.done = self.start_done = completed
            self.t0 = self.t_last = time.monotonic()
        elif enabled and total:
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                       TimeRemainingColumn)

            self.p = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), *extra_columns,
                              TimeElapsedColumn(), TimeRemainingColumn(), console=Console(stderr=True),
                              transient=False)
            self.task = self.p.add_task(label, total=total, completed=completed, **fields)
            self.p.start()

    def _plain_line(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.t_last < PLAIN_EVERY_S:
            return
        self.t_last = now
        rate = (self.done - self.start_done) / max(now - self.t0, 1e-9)
        eta = _duration((self.total - self.done) / rate) if rate > 0 else "?"
        pct = 100.0 * self.done / self.total
        print(f"{self.label}: {self.done}/{self.total} ({pct:.0f}%), {rate:.1f}/s, elapsed {_duration(now - self.t0)}, "
              f"ETA {eta}", file=sys.stderr, flush=True)

    def advance(self, n: int = 1, **fields) -> None:
        if self.p:
            self.p.update(self.task, advance=n, **fields)
        elif self.plain:
            self.done += n
            self._plain_line()

    def update(self, **fields) -> None:
        """Set the bar's position (completed=N) and its extra columns' fields."""
        if self.p:
            self.p.update(self.task, **fields)
        elif self.plain and "completed" in fields:
            self.done = fields["completed"]
            self._plain_line()

    def close(self) -> None:
        if self.p:
            self.p.stop()
