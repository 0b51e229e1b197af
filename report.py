"""Write the study report (PDF and its editable typst source) from a study folder.

Example: python report.py logs/study          # → logs/study/report/report.pdf, report.typ, figures/, tables/
Every number comes from the study folder (plan.json, status.json, run folders, the collector's CSVs, analysis/,
scale/results.json); an experiment without results is shown as missing.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from commons import UserError, run_cli, setup_logging
from report.folder import load_study
from report.render import write_report


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("study", type=Path, help="the study folder written by study.py (e.g. logs/study)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: STUDY/report)")
    p.add_argument("--log_level", choices=["debug", "info", "warning"], default="info")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> Path:
    """Read the study folder and write the report; returns the PDF's path."""
    args = parse_args(argv)
    if not args.study.is_dir():
        raise UserError(f"study folder {args.study} does not exist; pass the folder study.py wrote "
                        f"(default logs/study), or run `make study` first")
    out = args.out or args.study / "report"
    setup_logging(out, args.log_level)
    study = load_study(args.study.resolve())
    pdf = write_report(study, out.resolve())
    print(f"report: {pdf}")
    return pdf


if __name__ == "__main__":
    run_cli(main)
