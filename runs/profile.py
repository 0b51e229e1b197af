"""Where the time of a run goes: nested wall-clock phases, logged one line each and stored in results.json.

A phase opened inside another is recorded under "outer/inner" (e.g. "mining/encode/forward"), so shared code such
as feature extraction is charged to whichever phase called it. One profile per process; train.py and eval.py
import this module first, so the first run's "startup" phase includes the imports.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from functools import wraps
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
_clock = time.perf_counter  # the tests replace it with a fake clock
IMPORTED = _clock()  # the first run of a process counts its start-up from here
_END = object()


@dataclass
class PhaseRecord:
    """What a block tells its phase: the number of images it processed."""
    images: int = 0


class Profile:
    """Accumulated seconds (and images, for encoding phases) per phase path."""

    def __init__(self, start: float) -> None:
        self.start = start
        self.seconds: dict[str, float] = {}
        self.images: dict[str, int] = {}
        self.order: dict[str, int] = {}  # phase path → rank of its first start, for a tree in running order
        self.stack: list[str] = []

    @contextmanager
    def phase(self, name: str, images: int = 0) -> Iterator[PhaseRecord]:
        """Time the block as phase `name`, nested under the phases open around it; `images` it processed (or set
        the yielded record's .images when the count is known only at the end)."""
        path = "/".join([*self.stack, name])
        self.order.setdefault(path, len(self.order))
        self.stack.append(name)
        record = PhaseRecord(images)
        began = _clock()
        try:
            yield record
        finally:
            self.stack.pop()
            self.seconds[path] = self.seconds.get(path, 0.0) + _clock() - began
            if record.images:
                self.images[path] = self.images.get(path, 0) + record.images

    def add(self, name: str, seconds: float) -> None:
        """Record a phase timed elsewhere (e.g. start-up, from the process start to now)."""
        self.order.setdefault(name, len(self.order))
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    def summary(self) -> dict:
        """{"total_s", "unaccounted_s", "phases": {path: {"s", ["images", "images_per_s"]}}}, phases in tree order.
        unaccounted_s: the whole run minus its top-level phases (logging, plots, small steps)."""
        total = _clock() - self.start
        phases = {}
        for path in sorted(self.seconds, key=self._tree_key):
            s, n = self.seconds[path], self.images.get(path, 0)
            phases[path] = {"s": round(s, 3), **({"images": n, "images_per_s": round(n / s, 1)} if n and s else {})}
        top = sum(s for p, s in self.seconds.items() if "/" not in p)
        return {"total_s": round(total, 3), "unaccounted_s": round(total - top, 3), "phases": phases}

    def _tree_key(self, path: str) -> list[int]:
        parts = path.split("/")
        return [self.order.get("/".join(parts[:i + 1]), 0) for i in range(len(parts))]


def format_summary(summary: dict) -> list[str]:
    """The log lines of a summary: one per phase, indented by depth, with its share of the whole run."""
    total = summary["total_s"] or 1e-9
    lines = [f"time profile: {summary['total_s']:.1f} s in all"]
    rows = [*summary["phases"].items(), ("other (not in a phase)", {"s": summary["unaccounted_s"]})]
    for path, p in rows:
        depth, name = path.count("/"), path.rsplit("/", 1)[-1]
        rate = f", {p['images']} images, {p['images_per_s']:.1f} img/s" if "images" in p else ""
        lines.append(f"  {'  ' * depth}{name:<{24 - 2 * depth}} {p['s']:9.2f} s {100 * p['s'] / total:5.1f}%{rate}")
    return lines


_current = Profile(IMPORTED)
_begun = False


def begin() -> Profile:
    """Start the profile of a run: counted from the process start for the first run of a process (the imports
    included), from now for later runs in the same process (tests calling main() again)."""
    global _current, _begun
    _current = Profile(IMPORTED if not _begun else _clock())
    _begun = True
    return _current


def imports_paid() -> None:
    """Count the next run's start-up from its begin(), not from the import of this module: for a process forked
    from one that imported everything beforehand (the study's fork server)."""
    global _begun
    _begun = True


def current() -> Profile:
    """The profile of the running run."""
    return _current


def phase(name: str, images: int = 0):
    """Context manager: time the block as phase `name` of the current profile (see Profile.phase)."""
    return _current.phase(name, images)


def mark_startup() -> None:
    """Record "startup": the time from the profile's start to now not already in a phase (imports, argument parsing
    and checks; the scripts time the dataset scan and the model building as phases of their own)."""
    timed = sum(s for p, s in _current.seconds.items() if "/" not in p)
    _current.order["startup"] = -1  # listed first: it began first
    _current.add("startup", _clock() - _current.start - timed)


def timed_iter(iterable: Iterable[T], name: str = "data") -> Iterator[T]:
    """The items of iterable, the wait for each one timed as phase `name` (a DataLoader: loading and decoding, or
    waiting for the workers)."""
    it = iter(iterable)
    while True:
        with _current.phase(name):
            item = next(it, _END)
        if item is _END:
            return
        yield item


def timed(name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """Decorator: every call of the function is timed as phase `name`."""
    def wrap(fn: Callable[..., T]) -> Callable[..., T]:
        @wraps(fn)
        def run(*args, **kwargs) -> T:
            with _current.phase(name):
                return fn(*args, **kwargs)
        return run
    return wrap
