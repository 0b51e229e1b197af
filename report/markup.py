"""Typst markup helpers: user text as escaped string literals, tables, figures, compilation."""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from commons import UserError

MISSING = "missing"
ZERO_WIDTH_SPACE = "\u200b"


def string(text: str) -> str:
    """A typst string literal holding text verbatim (for code mode: table cells, function arguments)."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "")
    return f'"{escaped}"'


def esc(text: object) -> str:
    """Any text (dataset names, flags, error messages, numbers) placed in markup exactly as it is.

    It becomes an embedded string expression terminated by ';', so none of its characters (_ * # $ @ < [ ...)
    is read as markup and no following '.' or '(' continues the expression.
    """
    return f"#{string(str(text))};"


def code(text: str) -> str:
    """text in monospace, verbatim (flags such as --mining: the text font would join '--' into a dash)."""
    return f"#raw({string(text)});"


def breakable(text: str) -> str:
    """text with a zero-width space after each '_', so that long flag names may wrap in narrow columns."""
    return text.replace("_", "_" + ZERO_WIDTH_SPACE)


def path_arg(path: Path, base: Path) -> str:
    """A file path for typst's image()/bibliography(), relative to the document's folder."""
    return string(path.relative_to(base).as_posix())


def figure(image: Path, base: Path, caption: str, width: str = "100%", label: str | None = None) -> str:
    """A numbered figure of an image file; caption is markup (escape user text with esc())."""
    tag = f" <{label}>" if label else ""
    return f"#figure(image({path_arg(image, base)}, width: {width}), caption: [{caption}]){tag}\n"


def table(header: list[list[str]], rows: Iterable[list[str]], columns: int, align: str = "right",
          caption: str | None = None) -> str:
    """A booktabs-style table (rules above, below the header and at the bottom) in code mode.

    header: rows of cells already in code syntax (e.g. string(...) or table.cell(...)); rows: plain texts.
    """
    head = ",\n  ".join(", ".join(line) for line in header)
    body = ",\n  ".join(", ".join(string(c) for c in row) for row in rows)
    table_code = (f"table(columns: {columns}, stroke: none, align: (left,) + ({align},) * {columns - 1},\n"
                  f"  table.hline(stroke: 0.8pt),\n  table.header({head}),\n  table.hline(stroke: 0.5pt),\n"
                  f"  {body},\n  table.hline(stroke: 0.8pt))")
    if caption is None:
        return f"#{table_code}\n"
    return f"#figure({table_code}, caption: [{caption}], kind: table)\n"


def bullets(items: Iterable[str]) -> str:
    """A markup list; items are markup."""
    return "".join(f"- {item}\n" for item in items)


def compile_pdf(source: Path, pdf: Path) -> None:
    """Compile a typst file into a PDF with the typst package's bundled compiler and fonts."""
    import typst
    try:
        typst.compile(str(source), output=str(pdf), root=str(source.parent))
    except typst.TypstError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"typst could not compile {source} ({first[:200]}); fix the edited source or rerun "
                        f"report.py to rewrite it") from None
