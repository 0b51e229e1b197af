"""Assemble the report: STUDY/report/report.typ (editable), figures/, tables/*.tex, refs.bib → report.pdf."""
from __future__ import annotations

import logging
from pathlib import Path

from .discussion import conclusion, questions, scale_section
from .folder import Study
from .markup import compile_pdf
from .references import write_bibtex
from .results import heatmap_section, prediction_sources, results_section
from .scale import read_scale
from .sections import TITLE, data_section, introduction, method, related_work, title_page

PREAMBLE = f"""// Written by report.py from the study folder; edit freely and compile with `typst compile report.typ`.
#set document(title: "{TITLE}")
#set page(paper: "a4", margin: (x: 2cm, y: 2.2cm), numbering: "1")
#set text(font: "New Computer Modern", size: 10pt)
#set par(justify: true)
#show "--": it => text(ligatures: false, it)  // flags stay "--", not a dash
#set heading(numbering: "1.1")
#show figure: set block(breakable: true)
#show table: set text(size: 7.5pt)
#show table: set par(justify: false)
#show figure.caption: set text(size: 8.5pt)
"""


def document(study: Study, folder: Path) -> str:
    """The typst source of the whole report; figures and tables are written below folder as a side effect."""
    figures = folder / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    write_bibtex(folder / "refs.bib")
    scale = read_scale(study.root / "scale" / "results.json")
    sources = prediction_sources(study)
    parts = [PREAMBLE, title_page(study), introduction(study), related_work(), method(study),
             data_section(study, figures, folder), results_section(study, sources, figures, folder),
             heatmap_section(sources, figures, folder), scale_section(scale), questions(study, scale),
             conclusion(study), '#bibliography("refs.bib", title: "References", style: "ieee")\n']
    return "\n".join(parts)


def write_report(study: Study, folder: Path) -> Path:
    """Write folder/report.typ with its figures and tables, and compile folder/report.pdf; returns the PDF path."""
    folder.mkdir(parents=True, exist_ok=True)
    source = folder / "report.typ"
    source.write_text(document(study, folder))
    pdf = folder / "report.pdf"
    compile_pdf(source, pdf)
    logging.info(f"wrote {source} and {pdf}")
    return pdf
