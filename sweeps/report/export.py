"""Each report table as CSV and as LaTeX (booktabs, in a captioned table float) beside
report.html, for a paper or a spreadsheet.

CSV: one row per printed cell (tidy): the table's row label, its column, the cell as printed
(mean ± interval, n, [paper X]) and its numbers, ``estimate``, ``low``, ``high`` (the 95%
interval), ``n`` and ``p`` where the cell has them: from the section's own ``numbers`` where it
gives them (unrounded), else read from the printed cell (rounded as printed; a p printed as
"<0.001" reads 0.001, its upper bound).

LaTeX: sized for an A4 page with 2.5 cm margins (TEXT_WIDTH, portrait): a table whose cells fit
is set as is; a wider one wraps its columns (p{} columns, each at least its longest word);
one whose words cannot fit the portrait width is set landscape on purpose (pdflscape), and one
too wide even for that is split into column groups, each repeating the row labels. A file
needs \\usepackage{array,booktabs,pdflscape} in the including document.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pandas as pd

from .tables import Section

TABLES = "tables"  # the folder beside report.html
NUMBERS = ("estimate", "low", "high", "n", "p")

# The page: A4 (21 x 29.7 cm) with 2.5 cm margins, in TeX points (72.27 per inch).
PT_PER_CM = 72.27 / 2.54
TEXT_WIDTH = 16.0 * PT_PER_CM  # portrait
TEXT_HEIGHT = 24.7 * PT_PER_CM  # the width a landscape table has
CHAR = 4.4  # a lowercase letter or digit of \footnotesize Computer Modern, in pt (a safe side)
WIDE = 6.6  # a capital, a symbol set as math (±, <, |), in pt
NARROW = set("abcdefghijklnopqrstuvxyz0123456789 .,:;()[]-+=/'!?")
SEP = 3.0  # \tabcolsep, pt (each column has it on both sides)


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
           "^": r"\textasciicircum{}", "±": r"$\pm$", "<": r"$<$", ">": r"$>$", "|": r"$|$"}


def escaped(text: str) -> str:
    return "".join(SPECIAL.get(c, c) for c in str(text))


# ---- numbers ------------------------------------------------------------------------------
NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[-+]?inf|nan"
PLUS_MINUS = re.compile(rf"^\s*({NUM})\s*±\s*({NUM})")
BRACKET = re.compile(rf"^\s*({NUM})\s*\[\s*({NUM})\s*,\s*({NUM})\s*\]")
LEADING = re.compile(rf"^\s*({NUM})(?![\w.])")
N_IS = re.compile(r"\bn=(\d+)")
P_IS = re.compile(rf"\bp(?:_\w+)?=(<?)({NUM})")
P_COLUMN = re.compile(r"^p(\b|_)", re.IGNORECASE)  # "p", "p sign-flip", "p_Holm": p-values


def numbers_of(text) -> dict[str, float]:
    """A printed cell's numbers: "72.0 ± 4.9 (n=3)", "+0.40 [+0.04, +0.77]", "0.81 (p=0.012)",
    "3"; nan for what it does not print."""
    out = dict.fromkeys(NUMBERS, math.nan)
    if not isinstance(text, str):
        if isinstance(text, (int, float)) and not isinstance(text, bool):
            out["estimate"] = float(text)
        return out
    if m := PLUS_MINUS.match(text):
        est, half = float(m[1]), float(m[2])
        out.update(estimate=est, low=est - half, high=est + half)
    elif m := BRACKET.match(text):
        out.update(estimate=float(m[1]), low=float(m[2]), high=float(m[3]))
    elif (m := LEADING.match(text)) and not re.match(r"^\s*\S+\s+of\s", text):
        rest = text[m.end():].lstrip()
        if not rest or rest.startswith(("(", "[", "%")):  # a number, not a name like "2 seeds"
            out["estimate"] = float(m[1])
    if m := N_IS.search(text):
        out["n"] = float(m[1])
    if m := P_IS.search(text):
        out["p"] = float(m[2])
    return out


def tidy(table: pd.DataFrame, numbers: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per cell: the row label, the column, the cell as printed and its NUMBERS."""
    index = table.index.name or "row"
    given = {} if numbers is None else {k: r for k, r in numbers.iterrows()}
    rows = []
    for label, values in table.iterrows():
        for column, text in values.items():
            mine = given.get((label, column))
            nums = ({k: mine.get(k, math.nan) for k in NUMBERS} if mine is not None
                    else numbers_of(text))
            if mine is None and P_COLUMN.match(str(column)) and math.isnan(nums["p"]):
                bound = re.match(rf"^\s*<\s*({NUM})", str(text))  # "<0.001": its bound
                nums["p"] = float(bound[1]) if bound else nums["estimate"]  # a p-value column
                nums["estimate"] = math.nan
            shown = "-" if text is None or (isinstance(text, float) and math.isnan(text)) else text
            rows.append({index: label, "column": column, "cell": shown, **nums})
    return pd.DataFrame(rows, columns=[index, "column", "cell", *NUMBERS])


# ---- LaTeX ------------------------------------------------------------------------------
def _width(text: str) -> float:
    return sum(CHAR if c in NARROW else WIDE for c in str(text))


def _longest_word(text: str) -> float:
    return max((_width(w) for w in str(text).split()), default=0.0)


def layout(table: pd.DataFrame) -> tuple[str, list[list[str]], list[float | None]]:
    """("portrait" or "landscape", column groups (each shown with the row labels), each
    column's p{} width in pt or None for its natural width)."""
    cells = table.fillna("-").astype(str)
    cols = list(cells.columns)
    label = [str(i) for i in cells.index] + [str(cells.index.name or "")]
    natural = {c: max(_width(c), *(cells[c].map(_width))) + 2 * SEP for c in cols}
    shortest = {c: max(_longest_word(c), *(cells[c].map(_longest_word))) + 2 * SEP
                for c in cols}
    label_natural = max(map(_width, label)) + 2 * SEP
    label_short = max(map(_longest_word, label)) + 2 * SEP
    for page, width in (("portrait", TEXT_WIDTH), ("landscape", TEXT_HEIGHT)):
        if label_natural + sum(natural.values()) <= width:
            return page, [cols], [None] * (len(cols) + 1)
        if label_short + sum(shortest.values()) <= width:
            return page, [cols], fitted([label_natural, *natural.values()],
                                        [label_short, *shortest.values()], width)
    # split the columns into groups that each fit a landscape page beside the row labels
    room = TEXT_HEIGHT - label_short
    groups, current, used = [], [], 0.0
    for c in cols:
        if current and used + shortest[c] > room:
            groups.append(current)
            current, used = [], 0.0
        current.append(c)
        used += shortest[c]
    groups.append(current)
    return "landscape", groups, [None]  # each group fitted on its own


def fitted(natural: list[float], shortest: list[float], width: float) -> list[float]:
    """Column widths summing to ``width``: each at least its longest word, the room left
    shared in proportion to what each would take unwrapped."""
    spare = width - sum(shortest)
    extra = [max(n - s, 0.0) for n, s in zip(natural, shortest, strict=True)]
    total = sum(extra) or 1.0
    return [s + spare * e / total for s, e in zip(shortest, extra, strict=True)]


def tabular(table: pd.DataFrame, widths: list[float | None]) -> str:
    """A booktabs tabular of the printed cells; the row labels first."""
    cells = table.fillna("-").astype(str)

    def spec(w: float | None, first: bool) -> str:
        if w is None:
            return "l" if first else "r"
        return rf">{{\raggedright\arraybackslash}}p{{{max(w - 2 * SEP, 4):.1f}pt}}"

    fmt = "".join(spec(w, i == 0) for i, w in enumerate(widths))
    head = " & ".join([escaped(cells.index.name or ""), *map(escaped, cells.columns)])
    lines = [rf"\begin{{tabular}}{{{fmt}}}", r"\toprule", head + r" \\", r"\midrule"]
    for label, row in cells.iterrows():
        lines.append(" & ".join([escaped(label), *map(escaped, row)]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines)


LINE = 9.5  # \footnotesize's baselineskip, pt
RULES = 14.0  # a tabular's three booktabs rules and their spacing, pt


def _row_height(texts: list[str], widths: list[float | None]) -> float:
    """A row's height: its tallest cell's lines (a wrapped cell takes as many as it needs)."""
    lines = [1 if w is None else max(1, math.ceil(_width(t) / max(w - 2 * SEP, 1.0)))
             for t, w in zip(texts, widths, strict=True)]
    return max(lines) * LINE


def row_chunks(table: pd.DataFrame, widths: list[float | None], room: float) -> list[list]:
    """The table's rows (positions) in runs that each fit ``room`` pt of height under the
    header."""
    cells = table.fillna("-").astype(str)
    room -= _row_height([str(cells.index.name or ""), *cells.columns], widths) + RULES
    chunks, current, used = [], [], 0.0
    for i, (label, row) in enumerate(cells.iterrows()):
        h = _row_height([str(label), *row], widths)
        if current and used + h > room:
            chunks.append(current)
            current, used = [], 0.0
        current.append(i)  # positions: row labels repeat (a claim's student per noise rate)
        used += h
    return [*chunks, current]


def latex(table: pd.DataFrame, caption: str, label: str) -> str:
    """Captioned table floats sized for the page (layout): portrait, or landscape on purpose,
    split into column groups when even that is too narrow and into runs of rows when too tall
    for one page, each piece a float of its own ("continued")."""
    page, groups, widths = layout(table)
    width, height = (TEXT_WIDTH, TEXT_HEIGHT) if page == "portrait" else (TEXT_HEIGHT,
                                                                          TEXT_WIDTH)
    caption_height = (math.ceil(_width(caption) / width) + 1) * (LINE + 1) + 12
    pieces = []
    for cols in groups:
        part = table[cols]
        if len(groups) > 1:  # each group fitted on a landscape page on its own
            _, _, widths = layout_group(part)
        for rows in row_chunks(part, widths, height - caption_height - 20):
            pieces.append(tabular(part.iloc[rows], widths))
    floats = []
    for i, piece in enumerate(pieces):
        title = escaped(caption) if i == 0 else (rf"{escaped(caption.split(':')[0])} "
                                                 rf"(continued, {i + 1} of {len(pieces)})")
        body = [r"\begin{table}[p]" if len(pieces) > 1 else r"\begin{table}[t]",
                r"\centering", r"\footnotesize", rf"\setlength{{\tabcolsep}}{{{SEP:g}pt}}",
                rf"\caption{{{title}}}", *([rf"\label{{tab:{label}}}"] if i == 0 else []),
                piece, r"\end{table}"]
        if page == "landscape":
            body = [r"\begin{landscape}", *body, r"\end{landscape}"]
        floats.append("\n".join(body))
    splits = [f"{len(groups)} column groups" if len(groups) > 1 else "",
              f"{len(pieces)} floats" if len(pieces) > len(groups) else ""]
    note = (f"% {page}" + "".join(f", split into {x}" for x in splits if x)
            + ": needs \\usepackage{array,booktabs,pdflscape}")
    return "\n".join([note, *floats]) + "\n"


def layout_group(table: pd.DataFrame):
    """A split table's column group on a landscape page: its natural or fitted widths."""
    cells = table.fillna("-").astype(str)
    label = [str(i) for i in cells.index] + [str(cells.index.name or "")]
    natural = [max(map(_width, label)) + 2 * SEP,
               *(max(_width(c), *(cells[c].map(_width))) + 2 * SEP for c in cells.columns)]
    shortest = [max(map(_longest_word, label)) + 2 * SEP,
                *(max(_longest_word(c), *(cells[c].map(_longest_word))) + 2 * SEP
                  for c in cells.columns)]
    if sum(natural) <= TEXT_HEIGHT:
        return "landscape", [list(cells.columns)], [None] * len(natural)
    return "landscape", [list(cells.columns)], fitted(natural, shortest, TEXT_HEIGHT)


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
        numbers = getattr(section, "numbers", None)
        for part, table, given in (("-pooled", section.lead, None),
                                   ("", section.table, numbers)):
            if table is None or table.empty:
                continue
            name = f"{i:02d}-{slug(section.title)}{part}"
            tidy(table, given).to_csv(folder / f"{name}.csv", index=False)
            (folder / f"{name}.tex").write_text(latex(table, caption, name))
            written += [folder / f"{name}.csv", folder / f"{name}.tex"]
    return written
