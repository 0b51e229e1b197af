"""The recall–scalability section, from STUDY/scale/results.json as study.py writes it.

Accepted shapes: {"rows": [{"name": ..., <columns>}, ...]}, {"rows": {name: {<columns>}}}, or a bare list/dict
of such rows, with optional top-level "notes"/"note" (text, or the lines of one paragraph) and "sizes" (the
database sizes measured). Nested column groups, e.g.
{"search_ms_per_query": {"10000": 0.1, "1000000": 5.2}}, become one column each ("search ms per query @ 10k").
Every value shown is read from the file; absent cells read "missing".
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .folder import read_json
from .markup import MISSING, breakable, string, table

NAME_KEYS = ("name", "row", "key", "method")
LABEL_KEYS = ("label", "title")
ORDER = ("gem256", "netvlad16k", "netvlad_pca4096", "netvlad_pca1024", "netvlad_pca256", "netvlad_ivfpq")


@dataclass
class ScaleTable:
    """Rows (name, label, flat columns) of the scale measurements, and the file's notes."""
    columns: list[str]
    rows: list[tuple[str, str, dict[str, object]]]
    notes: str
    sizes: list[str]  # labels of the database sizes measured, e.g. ['10k', '100k', '1M']

    def key_columns(self) -> list[str]:
        """Columns quoted in the answers: size, bytes per image, search time at the largest database size and the
        change of R@1."""
        suffix = f"@ {self.sizes[-1]}" if self.sizes else None
        return [c for c in self.columns if c in ("dim", "bytes per image") or ("change" in c and c.endswith("R@1"))
                or (suffix is not None and c.endswith(suffix) and ("ms" in c.split() or "time" in c))]

    def value(self, name: str, *words: str) -> object | None:
        """The first column value of row `name` whose column name holds every one of words (case-insensitive)."""
        row = next((cols for n, _, cols in self.rows if n == name), None)
        if row is None:
            return None
        col = next((c for c in self.columns if all(w.lower() in c.lower() for w in words) and c in row), None)
        return None if col is None else row[col]


def size_label(key: str) -> str:
    """'1000000' → '1M', '10000' → '10k'; other keys unchanged."""
    if key.isdigit():
        n = int(key)
        for unit, div in (("M", 1_000_000), ("k", 1_000)):
            if n >= div and n % div == 0:
                return f"{n // div}{unit}"
    return key


def flatten(values: dict, prefix: str = "") -> dict[str, object]:
    """Nested dicts → {'outer @ inner': scalar}; lists become text; keys humanized ('_' → ' ', sizes as 10k/1M)."""
    flat: dict[str, object] = {}
    for key, value in values.items():
        name = f"{prefix} @ {size_label(str(key))}" if prefix else str(key).replace("_", " ")
        if isinstance(value, dict):
            flat.update(flatten(value, name))
        elif isinstance(value, list):
            flat[name] = " ".join(map(str, value))
        else:
            flat[name] = value
    return flat


def as_rows(data: object) -> list[tuple[str, dict]]:
    """(name, fields) of every row in the accepted shapes."""
    rows = data.get("rows", data) if isinstance(data, dict) else data
    if isinstance(rows, dict):
        return [(str(k), v) for k, v in rows.items() if isinstance(v, dict)]
    if isinstance(rows, list):
        return [(str(next((r[k] for k in NAME_KEYS if k in r), i)), r) for i, r in enumerate(rows)
                if isinstance(r, dict)]
    return []


def read_scale(path: Path) -> ScaleTable | None:
    """The scale table in results.json, rows in the issue's order; None when the file is missing or empty."""
    data = read_json(path)
    if data is None:
        return None
    rows, columns = [], []
    for name, fields in as_rows(data):
        label = next((str(fields[k]) for k in LABEL_KEYS if k in fields), name)
        flat = flatten({k: v for k, v in fields.items() if k not in NAME_KEYS + LABEL_KEYS})
        columns += [c for c in flat if c not in columns]
        rows.append((name, label, flat))
    rows.sort(key=lambda r: ORDER.index(r[0]) if r[0] in ORDER else len(ORDER))
    meta = data if isinstance(data, dict) else {}
    notes = meta.get("notes", meta.get("note", []))
    notes = notes if isinstance(notes, str) else " ".join(map(str, notes))  # lines of one paragraph
    sizes = [size_label(str(n)) for n in sorted(int(n) for n in meta.get("sizes", []) if str(n).isdigit())]
    return ScaleTable(columns, rows, notes, sizes) if rows else None


def cell(value: object) -> str:
    """A scale value as text: floats with up to 4 significant digits."""
    if value is None:
        return MISSING
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    return str(value)


def scale_table(t: ScaleTable, caption: str) -> str:
    """The typst table of the scale measurements: one column per descriptor/index, one row per measurement."""
    header = [[string("measurement")] + [string(breakable(label)) for _, label, _ in t.rows]]
    rows = ([c] + [cell(cols.get(c)) for _, _, cols in t.rows] for c in t.columns)
    return table(header, rows, len(t.rows) + 1, caption=caption)
