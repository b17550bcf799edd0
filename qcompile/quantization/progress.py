"""Progress bars of the PTQ passes (statistics, bias correction, ranking, debug) on stderr,
drawn by `rich` when stderr is an interactive terminal (the test the tuning progress uses,
qcompile.tuning.progress.interactive) or when forced (`--progress`); silent otherwise, so
logs, pipes and CI get no carriage-return noise."""
from __future__ import annotations

import sys


class Progress:
    """`with Progress(total, desc, enabled) as bar: ... bar.update()`; enabled=None: only on
    an interactive terminal. total=None: a counter without a bar."""

    def __init__(self, total: int | None, desc: str, enabled: bool | None = None, stream=None):
        self.total, self.desc, self.n = total, desc, 0
        self.stream = stream or sys.stderr
        if enabled is None:
            from ..tuning.progress import interactive

            enabled = interactive(self.stream)
        self.enabled = enabled
        self._bar = None
        if self.enabled:
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress as RichProgress,
                                       TextColumn, TimeElapsedColumn, TimeRemainingColumn)

            console = Console(file=self.stream, force_terminal=self.stream.isatty() or None,
                              width=100 if not self.stream.isatty() else None)
            cols = [TextColumn("{task.description}:")]
            if total:
                cols += [BarColumn(bar_width=30), MofNCompleteColumn(), TimeElapsedColumn(),
                         TextColumn("eta"), TimeRemainingColumn()]
            else:
                cols += [TextColumn("{task.completed}"), TimeElapsedColumn()]
            self._bar = RichProgress(*cols, console=console, refresh_per_second=5)
            self._task = self._bar.add_task(desc, total=total)
            self._bar.start()

    def update(self, k: int = 1) -> None:
        self.n += k
        if self._bar is not None:
            self._bar.update(self._task, advance=k)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
