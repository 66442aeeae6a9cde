"""Paper tables rebuilt from our runs: reproduced numbers beside the published ones.

A table is described in the workflow config (``tables:``) by the transcribed paper table
(``resources/reported/<paper>/<table>.csv``) and a list of :class:`RowSource`: which printed
row (method + setting, e.g. DPDiff-AD with ``local=yes;global=no;diffusion=yes``) our run
(method + variant) reproduces, and on which of our datasets each printed dataset is run.
Printed rows without a run are kept and marked "reported only".

A built table is tidy (one row per printed cell, columns :data:`COLUMNS`), stored as parquet
and CSV, and rendered in the paper's layout (a row per printed method, a column per metric
with its unit in the header) as markdown, LaTeX, HTML and plain text: each cell reads
"reported / reproduced (difference)", the best of each column is bold, every distinct note
(transcription, device) is a numbered footnote, and the caption and protocol note come with
the table. The metric table of the ``aggregate`` rule is written here too
(:func:`write_metric_table`).
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from anodiff.data.registry import name_key
from anodiff.reported import SPEED_METRICS, with_values
from anodiff.utils import atomic_path, atomic_write_text

LOWER_IS_BETTER = frozenset({"latency_ms", "latency_s", "params_m", "flops_g", "nfe"})
PERCENT_METRICS = frozenset({"image_auroc", "image_ap", "image_f1max", "pixel_auroc", "pixel_ap",
                             "pixel_f1max", "aupro", "mad"})
TIMED_METRICS = SPEED_METRICS - {"nfe"}  # depend on the device they were measured on
# how people read each metric, in the order tables show them
METRIC_LABELS = {
    "image_auroc": "image AUROC", "image_ap": "image AP", "image_f1max": "image F1-max",
    "pixel_auroc": "pixel AUROC", "pixel_ap": "pixel AP", "pixel_f1max": "pixel F1-max",
    "aupro": "AUPRO", "mad": "mAD", "fps": "FPS", "latency_ms": "latency", "latency_s": "latency",
    "nfe": "NFE", "params_m": "parameters", "flops_g": "FLOPs",
}
UNITS = {**{metric: "%" for metric in PERCENT_METRICS}, "fps": "images/s", "latency_ms": "ms/image",
         "latency_s": "s/image", "params_m": "M", "flops_g": "G"}
REPORTED_ONLY = "reported only"
COLUMNS = ["paper", "table", "dataset", "category", "method", "setting", "metric", "reported",
           "reproduced", "difference", "paper_protocol", "status", "run", "paper_run", "device", "note"]
RUN_KEYS = ("dataset", "method", "variant")  # one of our runs
RUN_COLUMNS = ("setting", "device", "pretrained_weights", "random_weights", "protocol",
               "paper_protocol")  # the same for a run's categories
_INDEX = ["dataset", "category", "method", "setting"]  # one printed row of the paper's layout


@dataclass(frozen=True)
class RowSource:
    """Our run that reproduces one printed row (method + setting) of a paper table."""

    reported_method: str  # method name as printed, e.g. "DiAD" or "PatchCore"
    method: str  # our method key
    variant: str  # our variant name
    datasets: dict[str, str]  # printed dataset (e.g. "mvtec_ad") -> our dataset key
    reported_setting: str = ""  # the printed row's setting, "" for main-comparison rows
    # printed -> our category where the names differ beyond case, "-", "_" and spaces
    categories: dict[str, str] = field(default_factory=dict)
    # the variant whose paper-protocol run fills the column "ours (paper protocol)"; "" = none
    paper_variant: str = ""

    @classmethod
    def from_config(cls, entry: dict[str, Any]) -> RowSource:
        return cls(reported_method=entry["reported"], method=entry["method"], variant=entry["variant"],
                   datasets=dict(entry["datasets"]), reported_setting=entry.get("setting", ""),
                   categories=dict(entry.get("categories", {})), paper_variant=entry.get("paper_protocol", ""))

    def run_name(self, dataset: str, variant: str = "") -> str:
        return f"{dataset}/{self.method}/{variant or self.variant}"


def metric_header(metric: str) -> str:
    """A metric's column header with its unit, e.g. ``latency (ms/image)`` or ``image AUROC (%)``."""
    label = METRIC_LABELS.get(metric, metric)
    return f"{label} ({UNITS[metric]})" if metric in UNITS else label


def with_means(metrics: pd.DataFrame) -> pd.DataFrame:
    """Per-category metric rows (of the evaluate rule) and one ``mean`` row per run, the papers'
    "Avg." row: every metric and FPS averaged over the run's categories, and what the run's
    categories share (setting, device, weight provenance) carried over. Sorted by run and
    category, each run's mean last."""
    per_category = metrics[metrics.category != "mean"]
    averaged = [c for c in METRIC_LABELS if c in per_category.columns]
    shared = [c for c in RUN_COLUMNS if c in per_category.columns]
    grouped = per_category.groupby(list(RUN_KEYS), as_index=False)
    means = grouped[averaged].mean()
    if shared:
        means = means.merge(grouped[shared].agg(_shared_value), on=list(RUN_KEYS))
    table = pd.concat([per_category, means.assign(category="mean")], ignore_index=True)
    return table.sort_values([*RUN_KEYS, "category"], key=lambda c: c.map(_mean_last), kind="stable",
                             ignore_index=True)


def _shared_value(values: pd.Series) -> Any:
    """The value a run's categories share; for weight provenance, the least favourable one."""
    if values.name == "pretrained_weights":
        return bool(values.all())
    if values.name == "random_weights":
        return ", ".join(sorted({name for text in values for name in str(text).split(", ") if name}))
    return values.iloc[0]


PAPER_PROTOCOL_NOTE = "PAPER protocol: chosen on the TEST set (optimistic, not an honest number)"
PAPER_COLUMN_NOTE = ("third number: ours with the PAPER's protocol (its test-set shortcuts, optimistic): "
                     "paper protocol - ours = selection bias, reported - paper protocol = the rest")  # no "; "


def weights_note(random_weights: str) -> str:
    """The note on every number computed with random stand-ins for pretrained networks."""
    return f"RANDOM weights ({random_weights}): not comparable with the paper" if random_weights else ""


def _mean_last(value: Any) -> Any:
    return f"~{value}" if value == "mean" else value  # "~" sorts after letters


def our_numbers(metrics: pd.DataFrame, fps: pd.DataFrame | None = None) -> pd.DataFrame:
    """Long table (dataset, method, variant, category, metric, value, device) of our runs.

    ``metrics``: per-category rows of the evaluate rule; a ``mean`` row per run is added (the
    papers' "Avg." row). Metric values become % like the printed ones. ``fps``: rows of the
    fps benchmark rule (images/s at batch 64), giving ``fps``, ``latency_ms``/``latency_s`` per
    image and ``nfe``.
    """
    keys = list(RUN_KEYS)
    present = [m for m in METRIC_LABELS if m in PERCENT_METRICS and m in metrics.columns]
    measured = with_means(metrics)
    measured["weights"] = measured["random_weights"].fillna("") if "random_weights" in measured else ""
    measured["protocol"] = measured["protocol"].fillna("honest") if "protocol" in measured else "honest"
    long = measured.melt(id_vars=keys + ["category", "weights", "protocol"], value_vars=present, var_name="metric")
    long["value"] = long["value"] * 100
    long["device"] = ""
    if fps is not None and len(fps):
        speed = fps.assign(category="mean", fps=fps["images_per_second"], latency_s=fps["seconds_per_image"],
                           latency_ms=fps["seconds_per_image"] * 1000,
                           weights=fps["random_weights"].fillna("") if "random_weights" in fps else "",
                           protocol="honest")
        speed = speed.melt(id_vars=keys + ["category", "device", "weights", "protocol"],
                           value_vars=sorted(SPEED_METRICS),
                           var_name="metric")
        long = pd.concat([long, speed[long.columns]], ignore_index=True)
    return long


def build_table(reported: pd.DataFrame, sources: Sequence[RowSource], ours: pd.DataFrame,
                reference_device: str = "") -> pd.DataFrame:
    """Every printed cell with the reproduced value beside it (tidy, columns :data:`COLUMNS`).

    ``reference_device``: the device a paper measured speed on; our speeds (FPS, latency)
    from another device get a note, since such numbers are not comparable.
    """
    frame = with_values(reported).rename(columns={"v": "reported"})
    frame["reproduced"] = np.nan
    frame["paper_protocol"] = np.nan
    frame["run"] = ""
    frame["paper_run"] = ""
    frame["device"] = ""
    for source in sources:
        printed_rows = (frame.method == source.reported_method) & (frame.setting == source.reported_setting)
        for printed_dataset, dataset in source.datasets.items():
            run = ours[(ours.dataset == dataset) & (ours.method == source.method) & (ours.variant == source.variant)]
            lookup = {(name_key(row.category), row.metric): (row.value, row.device, getattr(row, "weights", ""),
                                                             getattr(row, "protocol", "honest"))
                      for row in run.itertuples()}
            rows = printed_rows & (frame.dataset == printed_dataset)
            for index in frame.index[rows]:
                category = source.categories.get(frame.at[index, "category"], frame.at[index, "category"])
                found = lookup.get((name_key(category), frame.at[index, "metric"]))
                if found is not None:
                    frame.at[index, "reproduced"] = found[0]
                    frame.at[index, "device"] = found[1]
                    frame.at[index, "run"] = source.run_name(dataset)
                    for extra in (weights_note(found[2]), PAPER_PROTOCOL_NOTE if found[3] == "paper" else ""):
                        _add_note(frame, index, extra)
            if source.paper_variant:
                _fill_paper_protocol(frame, index_rows=frame.index[rows], source=source, dataset=dataset, ours=ours)
    frame["difference"] = frame["reproduced"] - frame["reported"]
    frame["status"] = np.where(frame["reproduced"].notna(), "reproduced", REPORTED_ONLY)
    other_device = frame.metric.isin(TIMED_METRICS) & (frame.device != "") & (frame.device != reference_device)
    frame.loc[other_device, "note"] = ((frame.loc[other_device, "note"] + "; ").str.lstrip("; ")
                                       + "reproduced on " + frame.loc[other_device, "device"]
                                       + ", not the paper's device")
    return frame[COLUMNS].reset_index(drop=True)


def _add_note(frame: pd.DataFrame, index: Any, extra: str) -> None:
    if extra:
        note = frame.at[index, "note"]
        frame.at[index, "note"] = f"{note}; {extra}" if note else extra


def _fill_paper_protocol(frame: pd.DataFrame, index_rows: Sequence[Any], source: RowSource, dataset: str,
                         ours: pd.DataFrame) -> None:
    """The column "ours (paper protocol)" of one printed row: the paper-protocol run's numbers."""
    run = ours[(ours.dataset == dataset) & (ours.method == source.method) & (ours.variant == source.paper_variant)]
    lookup = {(name_key(row.category), row.metric): (row.value, getattr(row, "weights", "")) for row in run.itertuples()}
    for index in index_rows:
        category = source.categories.get(frame.at[index, "category"], frame.at[index, "category"])
        found = lookup.get((name_key(category), frame.at[index, "metric"]))
        if found is not None:
            frame.at[index, "paper_protocol"] = found[0]
            frame.at[index, "paper_run"] = source.run_name(dataset, source.paper_variant)
            _add_note(frame, index, PAPER_COLUMN_NOTE)
            if found[1] and weights_note(found[1]) not in frame.at[index, "note"]:
                _add_note(frame, index, weights_note(found[1]))


# ----------------------------------------------------------------------------- rendering
def escape_latex(text: str) -> str:
    r"""``text`` with LaTeX's special characters escaped (``_ % & # $ { } ~ ^ \``)."""
    return _LATEX_SPECIAL.sub(lambda match: _LATEX_ESCAPES[match.group()], text)


_LATEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                  "–": "--", "—": "---"}
_LATEX_SPECIAL = re.compile("|".join(re.escape(c) for c in _LATEX_ESCAPES))


@dataclass(frozen=True)
class _Format:
    """How one output format writes text, a best value, a footnote marker and a missing value."""

    escape: Callable[[str], str]
    bold: str  # format of a best value
    bold_legend: str  # the legend's explanation of it
    marker: str  # format of a footnote marker
    missing: str  # not printed by the paper, or not reproduced


FORMATS = {
    "markdown": _Format(lambda text: text.replace("|", r"\|"), "**{}**", "**bold**", " [{}]", "–"),
    "text": _Format(str, "{}*", "*", " [{}]", "–"),
    "latex": _Format(escape_latex, r"\textbf{{{}}}", r"\textbf{bold}", r"\textsuperscript{{{}}}", "--"),
    "html": _Format(html.escape, "<b>{}</b>", "<b>bold</b>", "<sup>{}</sup>", "&ndash;"),
}


def render(table: pd.DataFrame, fmt: str, caption: str = "", protocol: str = "") -> str:
    """The table as the paper lays it out, as one document of format ``fmt`` (``markdown``,
    ``latex``, ``html`` or ``text``).

    A row per printed method and a column per metric (unit in its header); each cell
    "reported / reproduced (reproduced - reported)", the best value of each column bold as the
    papers print it; each distinct note a numbered footnote. Around it: the caption, a legend
    (how many cells were reproduced, by which runs) and the protocol note. LaTeX is a
    ``table`` environment with ``\\caption`` and ``\\label{tab:<paper>-<table>}``.
    """
    style = FORMATS[fmt]
    wide, notes = _paper_layout(table, style)
    legend = _legend(table, style)
    if fmt == "latex":
        return _latex_document(wide, caption, legend, notes, protocol, _label(table))
    if fmt == "html":
        notes_html = "".join(f"<li>{html.escape(note)}</li>" for note in notes)
        return _html_page(caption, [f"<p>{legend}</p>", wide.to_html(index=False, escape=False, border=0),
                                    f'<ol class="notes">{notes_html}</ol>' if notes else "",
                                    f"<p><b>Protocol.</b> {html.escape(protocol)}</p>" if protocol else ""])
    grid = wide.to_markdown(index=False, tablefmt="pipe" if fmt == "markdown" else "simple")
    footnotes = [f"[{number}] {note}" for number, note in enumerate(notes, 1)]
    parts = [caption, legend, grid, "\n".join(footnotes), f"Protocol: {protocol}" if protocol else ""]
    return "\n\n".join(part for part in parts if part) + "\n"


def _paper_layout(table: pd.DataFrame, style: _Format) -> tuple[pd.DataFrame, list[str]]:
    """The wide table of formatted cells (headers and labels escaped) and its footnotes in order
    (a note's parts, separated by "; ", are footnoted one by one, so shared parts print once)."""
    cells = table.reset_index(drop=True)
    texts = {column: [_value_text(value, metric, best, style) for value, metric, best
                      in zip(cells[column], cells.metric, _best_in_column(cells, column))]
             for column in ("reported", "reproduced")}
    footnotes: dict[str, int] = {}
    rendered = []
    for i, (difference, metric, note) in enumerate(zip(cells.difference, cells.metric, cells.note.fillna(""))):
        cell = f"{texts['reported'][i]} / {texts['reproduced'][i]}"
        if pd.notna(difference):
            cell += f" ({_number(difference, metric, signed=True)})"
        if pd.notna(cells.paper_protocol[i]):
            cell += f" / {_number(cells.paper_protocol[i], metric)}"
        numbers = [footnotes.setdefault(part, len(footnotes) + 1) for part in note.split("; ") if part]
        if numbers:
            cell += style.marker.format(",".join(map(str, numbers)))
        rendered.append(cell)
    cells = cells.assign(cell=rendered)
    wide = cells.pivot_table(index=_INDEX, columns="metric", values="cell", aggfunc="first", sort=False)
    status = cells.groupby(_INDEX, sort=False)["status"].agg(
        lambda s: "reproduced" if (s == "reproduced").any() else REPORTED_ONLY)
    wide = wide.fillna("").join(status).reset_index()  # "": the paper prints no such cell
    for column in _INDEX + ["status"]:
        wide[column] = wide[column].astype(str).map(style.escape)
    wide.columns = [style.escape(metric_header(str(c))) for c in wide.columns]
    return wide, list(footnotes)


def _legend(table: pd.DataFrame, style: _Format) -> str:
    """What a cell means, how many were reproduced and by which of our runs."""
    reproduced = table[table.status == "reproduced"]
    rows = reproduced.groupby(["method", "setting", "run"], sort=False).size().index
    runs = "; ".join(f"{method}{f' ({setting})' if setting else ''}: {run}" for method, setting, run in rows)
    counts = (f": not printed or not reproduced. {len(reproduced)} of {len(table)} printed cells reproduced"
              f"{f' by our runs ({runs})' if runs else ''}; rows marked {REPORTED_ONLY!r} were not run by this "
              "pipeline. ")
    paper = table.paper_protocol.notna().any() if "paper_protocol" in table else False
    third = " / ours with the paper's protocol (where run)" if paper else ""
    return (style.escape(f"Cells: reported / reproduced (reproduced - reported){third}, in the unit of the column "
                         "header; ")
            + style.missing + style.escape(counts) + style.bold_legend + " = best of the column.")


def _value_text(value: float, metric: str, best: bool, style: _Format) -> str:
    if pd.isna(value):
        return style.missing
    text = _number(value, metric)
    return style.bold.format(text) if best else text


def _number(value: float, metric: str, signed: bool = False) -> str:
    """As the papers print them: % with one decimal; speeds and sizes with 3 significant digits,
    whole numbers from 100 on (no exponent)."""
    sign = "+" if signed else ""
    if metric in PERCENT_METRICS:
        return f"{value:{sign}.1f}"
    return f"{value:{sign}.0f}" if abs(value) >= 100 else f"{value:{sign}.3g}"


def _best_in_column(cells: pd.DataFrame, column: str) -> pd.Series:
    """Rows holding the best ``column`` value among methods of one (dataset, category, metric)."""
    groups = ["dataset", "category", "metric"]
    lower = cells.metric.isin(LOWER_IS_BETTER)
    signed = cells[column].where(~lower, -cells[column])
    best = signed.groupby([cells[g] for g in groups]).transform("max")
    return signed.notna() & (signed == best)


def _label(table: pd.DataFrame) -> str:
    """The LaTeX label ``tab:<paper>-<table>``."""
    name = f"{table.paper.iloc[0]}-{table.table.iloc[0]}" if len(table) else "table"
    return "tab:" + re.sub(r"[^A-Za-z0-9:-]", "-", name)


def _latex_document(wide: pd.DataFrame, caption: str, legend: str, notes: list[str], protocol: str,
                    label: str) -> str:
    """A ``table`` environment: caption, label, a plain ``tabular`` and the notes below it."""
    lines = [" & ".join(wide.columns) + r" \\", r"\hline"]
    lines += [" & ".join(row) + r" \\" for row in wide.itertuples(index=False)]
    below = [legend] + [rf"\textsuperscript{{{number}}} {escape_latex(note)}" for number, note in enumerate(notes, 1)]
    if protocol:
        below.append(rf"\textit{{Protocol:}} {escape_latex(protocol)}")
    return "\n".join([
        r"\begin{table}[htbp]", r"\centering", rf"\caption{{{escape_latex(caption)}}}", rf"\label{{{label}}}",
        r"\small", rf"\begin{{tabular}}{{{'l' * len(wide.columns)}}}", r"\hline", *lines, r"\hline",
        r"\end{tabular}", r"\par\smallskip", r"\begin{minipage}{\linewidth}\footnotesize",
        " \\\\\n".join(below), r"\end{minipage}", r"\end{table}",
    ]) + "\n"


_CSS = ("body{font-family:sans-serif;font-size:14px;margin:1em}table{border-collapse:collapse}"
        "th,td{padding:3px 8px;border-bottom:1px solid #ccc;text-align:left;white-space:nowrap}"
        "th{background:#f0f0f0}.caption{font-weight:bold}.notes{font-size:12px}")


def _html_page(title: str, body: Sequence[str]) -> str:
    """A self-contained HTML page (the Snakemake report shows it inline)."""
    parts = [f'<p class="caption">{html.escape(title)}</p>', *(part for part in body if part)]
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{_CSS}</style></head>\n<body>\n" + "\n".join(parts) + "\n</body></html>\n")


# ----------------------------------------------------------------------------- writing
def write_csv(frame: pd.DataFrame, path: Path) -> None:
    """``frame`` as CSV (no index), written atomically."""
    atomic_write_text(frame.to_csv(index=False), path)


def write_table(table: pd.DataFrame, parquet: Path, markdown: Path, latex: Path, caption: str,
                protocol: str, csv_path: Path | None = None, html_path: Path | None = None) -> None:
    """One paper table, written atomically: tidy as parquet (caption and protocol in its
    ``attrs``, which ``pd.read_parquet`` restores) and, if given, CSV; in the paper's layout as
    markdown, LaTeX and, if given, HTML (see :func:`render`)."""
    stored = table.copy()
    stored.attrs.update(caption=caption, protocol=protocol)
    with atomic_path(parquet) as tmp:
        stored.to_parquet(tmp, index=False)
    if csv_path is not None:
        write_csv(table, csv_path)
    outputs = {"markdown": markdown, "latex": latex, "html": html_path}
    for fmt, path in outputs.items():
        if path is not None:
            atomic_write_text(render(table, fmt, caption, protocol), path)


def metric_view(table: pd.DataFrame) -> pd.DataFrame:
    """Metric rows as people read them: metrics in % with one decimal, FPS (images/s of the
    fps job, :func:`anodiff.throughput.time_predictions`) with one, headers with units; the run
    and category keys first."""
    keys = [c for c in ("dataset", "method", "variant", "category") if c in table]
    metrics = [m for m in METRIC_LABELS if m in table and (m in PERCENT_METRICS or m == "fps")]
    shown = table[keys + metrics].copy()
    percent = [m for m in metrics if m in PERCENT_METRICS]
    shown[percent] = shown[percent] * 100
    if "pretrained_weights" in table:
        shown["weights"] = np.where(table["pretrained_weights"].astype(bool), "pretrained", "RANDOM")
    if "protocol" in table:
        shown["protocol"] = table["protocol"].fillna("honest")
    return shown.round(1).rename(columns=metric_header)


METRIC_TABLE_CAPTION = ("Metrics per dataset, method, variant and category (mean: the average over categories), "
                        "in %, exact (every score a threshold, no approximation); FPS: images/s of the fps job, the "
                        "trained model end to end (host-to-device copy, backbone, method) on the run's test images, "
                        "batch 64 after a warm-up batch, on its device. weights RANDOM: a pretrained network could not be loaded and a seeded "
                        "random stand-in was used (offline demo): such numbers are not comparable with any paper.")


def write_metric_table(table: pd.DataFrame, markdown: Path, html_path: Path | None = None,
                       csv_path: Path | None = None) -> None:
    """The ``aggregate`` rule's metric table as markdown and, if given, HTML (both
    :func:`metric_view`) and CSV (every column, metrics as fractions), written atomically."""
    view = metric_view(table)
    atomic_write_text(f"{METRIC_TABLE_CAPTION}\n\n{view.to_markdown(index=False)}\n", markdown)
    if html_path is not None:
        atomic_write_text(_html_page(METRIC_TABLE_CAPTION, [view.to_html(index=False, border=0)]), html_path)
    if csv_path is not None:
        write_csv(table, csv_path)


def run_summary(metric_table: Path) -> str:
    """The end-of-run lines Snakemake prints: runs evaluated, their mean image AUROC, and a
    loud line for every run computed with random stand-ins for pretrained weights."""
    if not metric_table.is_file():
        return ""
    table = pd.read_parquet(metric_table)
    means = table[table.category == "mean"]
    lines = [f"anodiff: {len(means)} run(s) evaluated; metric table {metric_table} (and .md/.html/.csv)"]
    for row in means.itertuples():
        weights = "pretrained" if getattr(row, "pretrained_weights", True) else f"RANDOM weights ({row.random_weights})"
        lines.append(f"  {row.dataset}/{row.method}/{row.variant}: image AUROC {100 * row.image_auroc:.1f} %, {weights}")
    if "pretrained_weights" in means and not means.pretrained_weights.all():
        lines.append("  !! runs with RANDOM weights are NOT comparable with the papers (offline stand-ins)")
    return "\n".join(lines)
