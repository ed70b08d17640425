"""Progress lines with a spinner on long steps (rich)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from rich.console import Console
from rich.markup import escape


class Progress:
    """One ``✓ step (1.2 s)`` line per step, notes and warnings in between."""

    def __init__(self, console: Console | None = None):
        self.console = console or Console(highlight=False, soft_wrap=True)

    @contextlib.contextmanager
    def step(self, title: str) -> Iterator[None]:
        started = time.monotonic()
        try:
            with self.console.status(escape(title) + "…"):
                yield
        except BaseException:
            self.console.print(f"[red]✗[/] {escape(title)}")
            raise
        seconds = time.monotonic() - started
        self.console.print(f"[green]✓[/] {escape(title)} [dim]({seconds:.1f} s)[/]")

    def note(self, text: str) -> None:
        self.console.print(f"  {escape(text)}")

    def warn(self, text: str) -> None:
        self.console.print(f"[yellow]![/] {escape(text)}")


@dataclass
class Journal:
    """What one ``up`` did (``actions``) and how to undo what it started (``undo``)."""

    progress: Progress
    actions: list[str] = field(default_factory=list)
    undo: list[Callable[[], None]] = field(default_factory=list)

    def rollback(self) -> None:
        """Stop what this run started, newest first; errors are ignored."""
        for step in reversed(self.undo):
            with contextlib.suppress(Exception):
                step()
