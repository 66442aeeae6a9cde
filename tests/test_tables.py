"""Table builders: printed numbers beside ours, reported-only rows, bold best, device notes; the
written outputs: valid LaTeX, differences and footnotes in every format, units, CSV."""

import html
import inspect
import re
import shutil
import subprocess

import pandas as pd
import pytest

from anodiff.reported import COLUMNS as REPORTED_COLUMNS
from anodiff.reported import load_table
from anodiff.tables import (COLUMNS, REPORTED_ONLY, RowSource, build_table, escape_latex, metric_header, metric_view,
                            our_numbers, render, with_means, write_metric_table, write_table)


def _reported(rows):
    frame = pd.DataFrame(rows, columns=["dataset", "category", "method", "setting", "metric", "value"])
    return frame.assign(paper="p", table="t1", note="")[REPORTED_COLUMNS].astype(str)


REPORTED = _reported([
    ("mvtec_ad", "bottle", "Ours", "", "image_auroc", "99.0"),
    ("mvtec_ad", "metal-nut", "Ours", "", "image_auroc", "98.5"),
    ("mvtec_ad", "scrw", "Ours", "", "image_auroc", "95.0"),
    ("mvtec_ad", "mean", "Ours", "", "image_auroc", "97.0"),
    ("mvtec_ad", "mean", "PatchCore", "", "image_auroc", "98.0"),
    ("mvtec_ad", "mean", "Ours", "", "fps", "12.5"),
    ("mvtec_ad", "mean", "Ours", "", "latency_ms", "80"),
    ("mvtec_ad", "mean", "PatchCore", "", "latency_ms", "40"),
    ("mvtec_ad", "mean", "Ours", "steps=3", "image_auroc", "96.0"),
])
METRICS = pd.DataFrame({  # per-category evaluate rows of our run, fractions
    "dataset": ["synth"] * 3, "method": ["m"] * 3, "variant": ["v"] * 3,
    "category": ["bottle", "screw", "metal_nut"], "image_auroc": [0.90, 0.70, 0.80], "pixel_auroc": [0.5, 0.5, 0.5],
})
FPS = pd.DataFrame({"dataset": ["synth"], "method": ["m"], "variant": ["v"], "images_per_second": [3.0],
                    "seconds_per_image": [1 / 3], "nfe": [2],
                    "device": ["cpu (2 cores)"]})
SOURCE = RowSource(reported_method="Ours", method="m", variant="v", datasets={"mvtec_ad": "synth"},
                   categories={"scrw": "screw"})  # a printed spelling that needs a map


def test_our_numbers_are_percent_with_a_mean_row():
    ours = our_numbers(METRICS, FPS).set_index(["category", "metric"])["value"]
    assert ours["bottle", "image_auroc"] == pytest.approx(90.0)
    assert ours["mean", "image_auroc"] == pytest.approx(80.0)  # mean of the three categories
    assert ours["mean", "fps"] == 3.0 and ours["mean", "latency_ms"] == pytest.approx(1000 / 3)


def test_reproduced_values_sit_beside_the_reported_ones():
    table = build_table(REPORTED, [SOURCE], our_numbers(METRICS, FPS), reference_device="NVIDIA A100")
    cell = table.set_index(["category", "method", "setting", "metric"])
    mean = cell.loc[("mean", "Ours", "", "image_auroc")]
    assert (mean.reported, mean.reproduced, mean.status) == (97.0, pytest.approx(80.0), "reproduced")
    assert mean.difference == pytest.approx(-17.0) and mean.run == "synth/m/v"
    assert cell.loc[("bottle", "Ours", "", "image_auroc")].reproduced == pytest.approx(90.0)
    assert cell.loc[("metal-nut", "Ours", "", "image_auroc")].reproduced == pytest.approx(80.0)  # spelling
    assert cell.loc[("scrw", "Ours", "", "image_auroc")].reproduced == pytest.approx(70.0)  # mapped
    # rows we did not run stay, marked; a setting we did not run is not matched to the default
    assert cell.loc[("mean", "PatchCore", "", "image_auroc")].status == REPORTED_ONLY
    assert cell.loc[("mean", "Ours", "steps=3", "image_auroc")].status == REPORTED_ONLY
    assert "not the paper's device" in cell.loc[("mean", "Ours", "", "fps")].note


def test_render_bolds_the_best_of_each_column_both_directions():
    table = build_table(REPORTED, [SOURCE], our_numbers(METRICS, FPS))
    markdown = render(table, "markdown")
    assert "**98.0** / –" in markdown  # PatchCore's printed AUROC is the best printed one
    assert "**40** / –" in markdown  # latency: lower is better, printed to 3 significant digits
    assert "80 / **333**" in markdown  # our latency in ms (1000 / 3 images/s), 3 significant digits
    assert "nan" not in markdown
    assert "97.0 / **80.0**" in markdown  # ours is the only reproduced one
    assert r"\textbf{98.0}" in render(table, "latex")


def test_every_transcribed_table_builds_with_no_runs():
    for paper, table_id in [("diad", "table1"), ("dpdiff", "table4"), ("d3ad", "table4")]:
        table = build_table(load_table(paper, table_id), [], our_numbers(METRICS))
        assert len(table) > 0 and (table.status == REPORTED_ONLY).all()


# ----------------------------------------------------------------------------- written outputs
TRICKY = _reported([  # specials in every text field: names, settings, notes
    ("mvtec_ad", "metal_nut", "Ours", "T=1000;k=5%", "image_auroc", "97.0"),
    ("mvtec_ad", "metal_nut", "A&B #1", "", "image_auroc", "98.0"),
    ("mvtec_ad", "mean", "Ours", "", "latency_ms", "80"),
]).assign(note=["", "OCR 'x^2': {sic}; column 1/2", "column 1/2"])
TRICKY_SOURCE = RowSource(reported_method="Ours", method="m", variant="v", datasets={"mvtec_ad": "synth"},
                          reported_setting="T=1000;k=5%", categories={"metal_nut": "metal_nut"})
CAPTION, PROTOCOL = "Table 2: 100% of run_a & {b} ~ $x$ ^ \\ #1", "Ours: exact AUROC; 50% on ~other_device."


@pytest.fixture
def written(tmp_path):
    """A table with LaTeX specials everywhere, written in every format."""
    table = build_table(REPORTED, [SOURCE], our_numbers(METRICS, FPS), reference_device="NVIDIA A100")
    table = pd.concat([table, build_table(TRICKY, [TRICKY_SOURCE], our_numbers(METRICS, FPS))], ignore_index=True)
    paths = {ext: tmp_path / f"t1.{ext}" for ext in ("parquet", "md", "tex", "csv", "html")}
    write_table(table, paths["parquet"], paths["md"], paths["tex"], CAPTION, PROTOCOL, csv_path=paths["csv"],
                html_path=paths["html"])
    return table, paths


def _latex_problems(tex: str) -> list[str]:
    """What would stop LaTeX: unbalanced braces or environments, unescaped specials, rows of a
    tabular with another number of cells than its column spec."""
    problems = []
    bare = re.sub(r"\\[{}&%$#_]", "", tex)  # escaped specials are text
    depth = 0
    for char in bare:
        depth += {"{": 1, "}": -1}.get(char, 0)
        if depth < 0:
            problems.append("a } closes nothing")
            depth = 0
    if depth:
        problems.append(f"{depth} unclosed {{")
    stack = []
    for kind, name in re.findall(r"\\(begin|end)\{(\w+)\}", bare):
        if kind == "begin":
            stack.append(name)
        elif not stack or stack.pop() != name:
            problems.append(rf"\end{{{name}}} does not close the open environment")
    problems += [rf"\begin{{{name}}} never ends" for name in stack]
    problems += [f"unescaped {char!r}" for char in "_%$#^~" if char in bare]
    body = re.search(r"\\begin\{tabular\}\{(l+)\}(.*)\\end\{tabular\}", bare, re.S)
    if body is None:
        return problems + ["no tabular"]
    columns = len(body.group(1))
    for row in body.group(2).split(r"\\"):
        cells = row.replace(r"\hline", "").strip()
        if cells and cells.count("&") != columns - 1:
            problems.append(f"row with {cells.count('&') + 1} cells, not {columns}: {cells[:60]}")
    return problems


def test_latex_is_a_captioned_labelled_table_with_everything_escaped(written):
    tex = written[1]["tex"].read_text()
    assert _latex_problems(tex) == []
    assert tex.startswith("\\begin{table}") and tex.rstrip().endswith("\\end{table}")
    assert r"\caption{Table 2: 100\% of run\_a \& \{b\} \textasciitilde{} \$x\$ \textasciicircum{} " \
           r"\textbackslash{} \#1}" in tex
    assert r"\label{tab:p-t1}" in tex
    assert r"A\&B \#1" in tex and r"T=1000;k=5\%" in tex and r"metal\_nut" in tex
    assert r"\textit{Protocol:} Ours: exact AUROC; 50\% on \textasciitilde{}other\_device." in tex


def test_the_checker_catches_what_stops_latex():
    good = "\\begin{table}\\begin{tabular}{ll}\na & b \\\\\n\\end{tabular}\\end{table}"
    assert _latex_problems(good) == []
    assert _latex_problems(good.replace("b", "b_1"))  # unescaped _
    assert _latex_problems(good.replace("a & b", "a & b & c"))  # a cell too many
    assert _latex_problems(good.replace("\\end{table}", ""))
    assert _latex_problems(good.replace("{ll}", "{ll"))


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex not installed (apt: texlive-latex-base)")
def test_latex_compiles(written, tmp_path):
    document = tmp_path / "doc.tex"
    document.write_text("\\documentclass{article}\n\\begin{document}\n\\input{t1.tex}\n\\end{document}\n")
    done = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", document.name], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout[-2000:]


def test_differences_notes_and_protocol_are_in_markdown_latex_and_html(written):
    _, paths = written
    markdown, tex, page = paths["md"].read_text(), paths["tex"].read_text(), paths["html"].read_text()
    assert "97.0 / **80.0** (-17.0)" in markdown  # reproduced - reported, in the column's unit
    assert r"97.0 / \textbf{80.0} (-17.0)" in tex and "97.0 / <b>80.0</b> (-17.0)" in page
    # the device note of our speeds is a footnote in every format, its marker in the cell
    note = "reproduced on cpu (2 cores), not the paper's device"
    marker = re.search(r"80 / \*\*333\*\* \(\+253\) \[(\d+)\]", markdown).group(1)
    assert f"[{marker}] {note}" in markdown
    assert rf"\textsuperscript{{{marker}}} {note}" in tex and f"<li>{html.escape(note)}</li>" in page
    # a shared note part is footnoted once, the cells carry both numbers
    assert markdown.count("column 1/2") == 1 and re.search(r"98\.0\*\* / – \[\d+,\d+\]", markdown)
    assert "reported only" in markdown and "reported only" in tex
    assert "Protocol: Ours: exact AUROC" in markdown and "<b>Protocol.</b> Ours: exact AUROC" in page
    assert "by our runs (Ours: synth/m/v" in markdown
    assert page.startswith("<!DOCTYPE html>") and "Table 2: 100% of run_a &amp; {b}" in page


def test_speed_columns_carry_their_own_unit(written):
    markdown = written[1]["md"].read_text()
    header = next(line for line in markdown.splitlines() if line.startswith("| dataset"))
    cells = [cell.strip() for cell in header.strip("|").split("|")]
    assert "latency (ms/image)" in cells and "FPS (images/s)" in cells and "image AUROC (%)" in cells
    assert metric_header("latency_s") == "latency (s/image)" and metric_header("nfe") == "NFE"
    row = next(line for line in markdown.splitlines() if "| PatchCore" in line)
    assert [cell.strip() for cell in row.strip("|").split("|")][cells.index("latency (ms/image)")] == "**40** / –"


def test_csv_and_parquet_hold_the_tidy_table_and_parquet_its_caption(written):
    table, paths = written
    from_csv = pd.read_csv(paths["csv"], keep_default_na=False, na_values=[""])
    assert list(from_csv.columns) == COLUMNS and len(from_csv) == len(table)
    assert from_csv.difference.dropna().tolist() == pytest.approx(table.difference.dropna().tolist())
    stored = pd.read_parquet(paths["parquet"])
    assert stored.attrs == {"caption": CAPTION, "protocol": PROTOCOL}
    assert render(stored, "text", stored.attrs["caption"]).startswith(CAPTION)


def test_write_table_keeps_its_old_call():
    """The pipeline's call without csv/html paths still works (and writes neither)."""
    parameters = inspect.signature(write_table).parameters
    assert parameters["csv_path"].default is None and parameters["html_path"].default is None


def test_latex_escape_covers_every_special():
    assert escape_latex(r"_%&#${}~^\ a–b") == (r"\_\%\&\#\$\{\}\textasciitilde{}\textasciicircum{}"
                                                r"\textbackslash{} a--b")


def test_metric_table_in_percent_with_units_as_markdown_html_and_csv(tmp_path):
    table = METRICS.assign(fps=[10.04, 20.0, 30.0], n_test_images=16)
    write_metric_table(table, tmp_path / "m.md", html_path=tmp_path / "m.html", csv_path=tmp_path / "m.csv")
    markdown = (tmp_path / "m.md").read_text()
    assert markdown.startswith("Metrics per dataset") and "image AUROC (%)" in markdown and "FPS (images/s)" in markdown
    view = metric_view(table)
    assert view["image AUROC (%)"].tolist() == [90.0, 70.0, 80.0] and view["FPS (images/s)"].iloc[0] == 10.0
    assert "<table" in (tmp_path / "m.html").read_text()
    assert pd.read_csv(tmp_path / "m.csv").image_auroc.tolist() == [0.9, 0.7, 0.8]  # all columns, fractions


def test_speeds_print_without_exponent():
    table = build_table(_reported([("mvtec_ad", "mean", "Ours", "", "latency_ms", "1190")]), [SOURCE],
                        our_numbers(METRICS, FPS.assign(seconds_per_image=[12.3456])))
    assert "**1190** / **12346** (+11156)" in render(table, "markdown")  # the only row: best of both


def test_with_means_adds_one_mean_row_per_run_last():
    frame = pd.concat([METRICS.assign(fps=[1.0, 2.0, 3.0]), METRICS.assign(variant="w", fps=4.0)], ignore_index=True)
    table = with_means(frame)
    assert table.category.tolist() == ["bottle", "metal_nut", "screw", "mean"] * 2
    mean = table.iloc[3]
    assert (mean.variant, mean.image_auroc, mean.fps) == ("v", pytest.approx(0.8), pytest.approx(2.0))
    assert len(with_means(table)) == len(table)  # an existing mean row is recomputed, not doubled


def test_report_captions_render_with_the_rules_params():
    """Every caption of workflow/report/ renders (Jinja, as Snakemake's report does, then reST)
    with the wildcards and params its rule gives it, for the demo config's tables and figures."""
    from types import SimpleNamespace

    import jinja2
    from docutils.core import publish_parts

    from anodiff.cli import DEFAULT_CONFIG, REPO
    from anodiff.config import load_yaml
    from anodiff.plan import build_plan

    plan = build_plan(load_yaml(DEFAULT_CONFIG), REPO)
    table_id, figure_id = next(iter(plan.tables)), next(iter(plan.figures))
    run = SimpleNamespace(dataset="synthetic", method="inversion", variant="demo")
    contexts = {
        "workflow.rst": {}, "metric_table.rst": {}, "metrics.rst": {"wildcards": run},
        "qualitative.rst": {"wildcards": run},
        "paper_table.rst": {"wildcards": SimpleNamespace(paper=table_id.split("/")[0], table=table_id.split("/")[1]),
                            "params": SimpleNamespace(table=plan.tables[table_id])},
        "paper_figure.rst": {"wildcards": SimpleNamespace(paper=figure_id.split("/")[0],
                                                          figure=figure_id.split("/")[1]),
                             "params": SimpleNamespace(figure=plan.figures[figure_id])},
    }
    captions = sorted(p.name for p in (REPO / "workflow" / "report").glob("*.rst"))
    assert captions == sorted(contexts)
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined)
    for name, context in contexts.items():
        snakemake = SimpleNamespace(config=plan.config, **context)
        text = env.from_string((REPO / "workflow" / "report" / name).read_text()).render(snakemake=snakemake)
        body = publish_parts(text, writer="html", settings_overrides={"halt_level": 2})["body"]
        assert "{{" not in body and "System Message" not in body, name
    caption = plan.tables[table_id]["caption"]
    assert caption in env.from_string((REPO / "workflow/report/paper_table.rst").read_text()).render(
        snakemake=SimpleNamespace(config=plan.config, **contexts["paper_table.rst"]))


def test_numbers_from_random_weights_are_marked_in_every_cell_and_the_metric_table(tmp_path):
    random = METRICS.assign(pretrained_weights=[True, False, True],
                            random_weights=["", "timm--resnet18", ""])
    table = build_table(REPORTED, [SOURCE], our_numbers(random, FPS.assign(random_weights="timm--resnet18")))
    cell = table.set_index(["category", "method", "setting", "metric"])
    assert "RANDOM weights (timm--resnet18)" in cell.loc[("scrw", "Ours", "", "image_auroc")].note
    assert "RANDOM" not in cell.loc[("bottle", "Ours", "", "image_auroc")].note
    # the mean over categories inherits the least favourable provenance
    assert "RANDOM weights" in cell.loc[("mean", "Ours", "", "image_auroc")].note
    assert "RANDOM weights" in cell.loc[("mean", "Ours", "", "fps")].note
    assert "RANDOM weights" in render(table, "markdown")
    means = with_means(random)
    assert not means[means.category == "mean"].pretrained_weights.iloc[0]
    write_metric_table(means, tmp_path / "metrics.md")
    shown = (tmp_path / "metrics.md").read_text()
    assert "| RANDOM" in shown and "| pretrained" in shown
