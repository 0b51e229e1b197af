"""Logging of the CLIs: console, and info.log/debug.log in the run folder, which may be created after start-up."""
from __future__ import annotations

import logging
import sys
from pathlib import Path


class _HeldRecords(logging.Handler):
    """Keeps log records until the run folder exists; log_to_folder writes them into its files."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


LOG_FORMAT = logging.Formatter("%(asctime)s   %(message)s", "%Y-%m-%d %H:%M:%S")


def setup_logging(output_folder: str | Path | None, console: str = "info", hold: bool = False) -> None:
    """Log to the console and, when output_folder is given, to output_folder/info.log and debug.log.

    hold (without output_folder): keep the records until log_to_folder(folder), so that a run folder can be
    created once the inputs are valid and still gets the whole log.
    """
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
        h.close()
    root.setLevel(logging.DEBUG)
    ch = logging.StreamHandler(sys.stdout)
    ch.setLevel(getattr(logging, console.upper()))
    ch.setFormatter(LOG_FORMAT)
    root.addHandler(ch)
    for noisy in ("PIL", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if output_folder is not None:
        log_to_folder(output_folder)
    elif hold:
        root.addHandler(_HeldRecords())


def log_to_folder(folder: str | Path) -> None:
    """Add info.log and debug.log in folder, first writing into them the records held since setup_logging."""
    root = logging.getLogger()
    held = [r for h in root.handlers if isinstance(h, _HeldRecords) for r in h.records]
    for h in [h for h in root.handlers if isinstance(h, _HeldRecords)]:
        root.removeHandler(h)
    Path(folder).mkdir(parents=True, exist_ok=True)
    for name, level in (("info.log", logging.INFO), ("debug.log", logging.DEBUG)):
        fh = logging.FileHandler(Path(folder) / name)
        fh.setLevel(level)
        fh.setFormatter(LOG_FORMAT)
        for record in held:
            if record.levelno >= level:
                fh.handle(record)
        root.addHandler(fh)
