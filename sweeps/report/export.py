"""Each report table as CSV and as LaTeX (booktabs, in a captioned table float) beside
report.html, for a paper or a spreadsheet: the cells as the report prints them (mean ±
interval, n, [paper X]); the numbers behind them are in the sweep's results.parquet."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from .tables import Section

TABLES = "tables"  # the folder beside report.html


def slug(title: str) -> str:
    """A file name from a section's title: a claim's name ("claim-c1"), else the title's words
    up to its first colon, lowercase, at most 48 characters on a word boundary."""
    if claim := re.match(r"C\d+ ", title):
        return f"claim-{claim.group().strip().lower()}"
    head = re.sub(r"[^a-z0-9]+", "-", title.split(": ", 1)[0].lower().replace(">", "-to-"))
    head = head.strip("-")
    return (head[:48].rsplit("-", 1)[0] if len(head) > 48 else head) or "table"


# LaTeX's special characters as text (pandas escapes a table's cells, not its caption)
SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
           "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
           "^": r"\textasciicircum{}"}


def escaped(text: str) -> str:
    return "".join(SPECIAL.get(c, c) for c in text)


def latex(table: pd.DataFrame, caption: str, label: str) -> str:
    """booktabs rules (pandas' default), cells and caption escaped, ± as math."""
    text = table.fillna("-").to_latex(escape=True, caption=escaped(caption),
                                      label=f"tab:{label}", position="t")
    return text.replace("±", r"$\pm$")


def export(sections: list[Section], out_dir: Path) -> list[Path]:
    """``NN-<slug>.csv`` and ``.tex`` per table (a claim's pooled table as ``-pooled``), in the
    report's order; the folder holds this report's tables only."""
    folder = out_dir / TABLES
    folder.mkdir(parents=True, exist_ok=True)
    for old in [*folder.glob("*.csv"), *folder.glob("*.tex")]:  # an earlier report's
        old.unlink()
    written = []
    for i, section in enumerate(sections, 1):
        caption = section.title + (f": {section.verdict}" if section.verdict else "")
        for part, table in (("-pooled", section.lead), ("", section.table)):
            if table is None or table.empty:
                continue
            name = f"{i:02d}-{slug(section.title)}{part}"
            table.fillna("-").to_csv(folder / f"{name}.csv")
            (folder / f"{name}.tex").write_text(latex(table, caption, name))
            written += [folder / f"{name}.csv", folder / f"{name}.tex"]
    return written
