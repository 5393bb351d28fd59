"""The report's LaTeX tables compile and fit the page they are set for (an A4 page with
2.5 cm margins, portrait or landscape on purpose): no overfull box wider than 1 pt. Needs
pdflatex (Debian's texlive-latex-recommended, `make tools`); skips, saying so, without it."""

import re
import shutil
import subprocess

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sweeps.report import report
from sweeps.report.export import latex, layout
from sweeps.store.results import SCHEMA
from tests.test_report import rows

PDFLATEX = shutil.which("pdflatex")
needs_tex = pytest.mark.skipif(PDFLATEX is None, reason="no pdflatex: the LaTeX tables are not "
                               "compiled (apt-get install texlive-latex-recommended)")
DOCUMENT = r"""\documentclass[a4paper]{article}
\usepackage[margin=2.5cm]{geometry}
\usepackage{array,booktabs,pdflscape}
\begin{document}
\input{%s}
\end{document}
"""
OVERFULL = re.compile(r"Overfull \\hbox \(([\d.]+)pt too wide\)")


def compile_widest(tex, tmp_path) -> float:
    """pdflatex the table in a page of its own; the widest overfull box, in pt (0: none);
    no float may be taller than its page."""
    (tmp_path / "doc.tex").write_text(DOCUMENT % tex.resolve().with_suffix(""))
    run = subprocess.run([PDFLATEX, "-interaction=nonstopmode", "-halt-on-error", "doc.tex"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    log = (tmp_path / "doc.log").read_text(errors="replace")
    assert run.returncode == 0, f"{tex.name} does not compile:\n{run.stdout[-2000:]}"
    assert "Float too large" not in log, f"{tex.name}: a float taller than its page"
    return max((float(w) for w in OVERFULL.findall(log)), default=0.0)


@pytest.mark.slow  # a report, then pdflatex once per table (about 25)
@needs_tex
def test_every_report_table_compiles_within_its_page(tmp_path):
    path = tmp_path / "results.parquet"
    pq.write_table(pa.Table.from_pylist(rows(), schema=SCHEMA), path)
    report([str(path)], tmp_path / "rep")
    texs = sorted((tmp_path / "rep" / "tables").glob("*.tex"))
    assert texs
    for tex in texs:
        assert compile_widest(tex, tmp_path) <= 1.0, tex.name


@needs_tex
def test_a_wide_table_is_wrapped_set_landscape_or_split_and_still_fits(tmp_path):
    words = "inconclusive consistent (p=0.012, n=3) +0.40 [+0.04, +0.77]"
    for columns, page, groups in ((4, "portrait", 1), (9, "landscape", 1), (30, "landscape", 3)):
        table = pd.DataFrame({f"column {i} of the table": [words, "x"] for i in range(columns)},
                             index=pd.Index(["g1 cnn-large>cnn-small", "mse"], name="student"))
        assert (layout(table)[0], len(layout(table)[1])) == (page, groups), columns
        tex = tmp_path / f"wide{columns}.tex"
        tex.write_text(latex(table, "a wide table_with & specials > 50%", f"wide{columns}"))
        assert compile_widest(tex, tmp_path) <= 1.0, (columns, tex.read_text()[:300])


@needs_tex
def test_a_long_table_is_split_into_floats_that_each_fit_a_page(tmp_path):
    table = pd.DataFrame({"cell": ["72.0 ± 4.9 (n=3)"] * 150, "tests": ["rho=-0.90 over 12"] * 150},
                         index=pd.Index([f"row {i}" for i in range(150)], name="student"))
    text = latex(table, "a long table", "long")
    assert text.count("\\begin{table}") > 1 and "(continued, 2 of" in text
    tex = tmp_path / "long.tex"
    tex.write_text(text)
    assert compile_widest(tex, tmp_path) <= 1.0
