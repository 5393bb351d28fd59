"""report.html: a self-contained page a reviewer can read: a header (commit, specs, data,
epochs, clusters), the claims' verdicts, every table as a real table whose cells link to the
MLflow runs behind them, and each figure with its caption."""

from __future__ import annotations

import base64
from html import escape
from pathlib import Path
from urllib.parse import quote

import pandas as pd

from ..tracking.names import UI_MODE
from .tables import Section

STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em 2em;max-width:1500px;color:#222}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:1.8em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:12.5px;margin:.4em 0}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:right;vertical-align:top;
white-space:nowrap}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
td.text{text-align:left;white-space:normal}
td.verdict{text-align:left;white-space:normal;min-width:9em;max-width:20em}
td.tests{text-align:left;white-space:normal;font-size:11.5px;min-width:24em;max-width:38em}
a{color:#1a5fb4;text-decoration:none}a:hover{text-decoration:underline}
.consistent{background:#e3f4e1}.contrary{background:#f6d5f0}.inconsistent{background:#fbe3e1}.inconclusive{background:#fff6d8}
.notes{font-size:12px;color:#444;margin:.2em 0 1em 0}.notes li{margin:.15em 0}
dl{display:grid;grid-template-columns:max-content auto;gap:.2em 1em;font-size:13px}
dt{font-weight:600}figure{margin:1.5em 0}figcaption{font-size:12.5px;max-width:70em;color:#333}
img{max-width:100%}
p.lead{font-size:12.5px;font-weight:600;margin:.6em 0 .1em 0}
table.pooled{font-size:13px}table.pooled td{background:#fafcff}
"""


class RunLinks:
    """Where a cell's MLflow runs open: one run's page, or the runs table filtered to them.
    ``base``: the MLflow UI's address (for a local SQLite store, `mlflow ui`'s default)."""

    def __init__(self, base: str | None, experiment_id: str | None):
        self.base, self.experiment_id = base, experiment_id

    def href(self, run_ids: list[str]) -> str | None:
        if not (self.base and self.experiment_id and run_ids):
            return None
        runs = f"{self.base}/#/experiments/{self.experiment_id}/runs"
        if len(run_ids) == 1:
            return f"{runs}/{run_ids[0]}?{UI_MODE}"
        where = "attributes.run_id IN (" + ", ".join(f"'{r}'" for r in run_ids) + ")"
        return f"{runs}?{UI_MODE}&searchFilter={quote(where)}"


def table_html(t: pd.DataFrame | None, links: RunLinks, runs: dict | None = None,
               cls: str = "") -> str:
    if t is None or t.empty:
        return ""
    head = "".join(f"<th>{escape(str(c))}</th>" for c in [t.index.name or "", *t.columns])
    rows = []
    for label, values in t.fillna("-").iterrows():
        cells = [f"<td>{escape(str(label))}</td>"]
        for column, value in values.items():
            text = escape(str(value))
            href = links.href((runs or {}).get((label, column), []))
            cls = ""
            if column == "verdict":
                cls = f' class="verdict {escape(str(value).split()[0])}"'
            elif column in ("tests", "statement"):
                cls = f' class="{"tests" if column == "tests" else "text"}"'
            cells.append(f'<td{cls}><a href="{escape(href)}">{text}</a></td>' if href
                         else f"<td{cls}>{text}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    attrs = f' class="{cls}"' if cls else ""
    return (f"<table{attrs}><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody>"
            "</table>")


def section_html(section: Section, links: RunLinks) -> str:
    verdict = ""
    if section.verdict:
        v = escape(section.verdict)
        verdict = f' <span class="{v.split()[0]}">&nbsp;{v}&nbsp;</span>'
    notes = "".join(f"<li>{escape(n)}</li>" for n in section.notes)
    pooled = ""
    if section.lead is not None and not section.lead.empty:
        pooled = ("<p class=lead>the claim's verdict: each effect with the seed as the unit "
                  "(each seed's effect the mean over the claim's rows)</p>"
                  + table_html(section.lead, links, cls="pooled")
                  + "<p class=lead>row by row (secondary)</p>")
    return (f"<h2>{escape(section.title)}{verdict}</h2>{pooled}"
            f"{table_html(section.table, links, section.runs)}"
            + (f'<ul class="notes">{notes}</ul>' if notes else ""))


def summary(claims: list[Section]) -> Section:
    table = pd.DataFrame([{"claim": c.title.split(" ", 1)[0], "statement": c.title.split(" ", 1)[1],
                           "verdict": c.verdict, **(c.sequential or {})}
                          for c in claims]).set_index("claim")
    return Section("the paper's claims: verdicts at this n", table)


def page(title: str, header: dict[str, str], sections: list[Section],
         figures: list[tuple[Path, str]], links: RunLinks) -> str:
    meta = "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in header.items())
    body = "".join(section_html(s, links) for s in sections)
    figs = "".join(
        f'<figure><img alt="{p.stem}" src="data:image/png;base64,'
        f'{base64.b64encode(p.read_bytes()).decode()}"><figcaption><b>{escape(p.stem)}.</b> '
        f"{escape(caption)}</figcaption></figure>" for p, caption in figures)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{escape(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{escape(title)}</h1><dl>{meta}</dl>"
            f"{body}<h2>Figures</h2>{figs}</body></html>")
