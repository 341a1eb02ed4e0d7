"""Progress reporting without a UI dependency: the core calls a callback, the CLI draws tqdm bars."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager

Advance = Callable[[int], None]


# ``with progress("phase", total, unit) as advance: advance(n)``
Progress = Callable[[str, int | None, str], AbstractContextManager[Advance]]


@contextmanager
def _silent(phase: str, total: int | None, unit: str) -> Iterator[Advance]:
    yield lambda _n: None


def no_progress(phase: str, total: int | None, unit: str) -> AbstractContextManager[Advance]:
    return _silent(phase, total, unit)
