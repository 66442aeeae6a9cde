"""The papers' published numbers, transcribed to ``resources/reported/<paper>/<table>.csv``.

One tidy row per printed number: ``paper, table, dataset, category, method, setting, metric,
value, note``; ``value`` is the number as printed (in %), empty when the paper prints "-" or
the OCR text is unreadable (``note`` says which). Table builders put our reproduced numbers
beside these.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pandas is imported where a table is built, not when the plan reads rows
    import pandas as pd

REPORTED_DIR = Path(__file__).resolve().parents[2] / "resources" / "reported"
COLUMNS = ["paper", "table", "dataset", "category", "method", "setting", "metric", "value", "note"]
KEY = ["dataset", "category", "method", "setting", "metric"]  # unique within a table
METRICS = frozenset({
    "image_auroc", "image_ap", "image_f1max", "pixel_auroc", "pixel_ap", "pixel_f1max", "aupro",
    "mad", "nfe", "latency_ms", "fps", "params_m", "flops_g",
})
SPEED_METRICS = frozenset({"fps", "latency_ms", "latency_s", "nfe"})  # measured by the fps rule


def table_path(paper: str, table: str) -> Path:
    """The transcribed table's CSV; an error naming it and the index when it does not exist."""
    path = REPORTED_DIR / paper / f"{table}.csv"
    if not path.is_file():
        raise FileNotFoundError(f"no transcribed table {path}; see {REPORTED_DIR / 'README.md'}")
    return path


def read_rows(paper: str, table: str) -> list[dict[str, str]]:
    """One transcribed table as plain rows (what the plan validates table configs against)."""
    with table_path(paper, table).open(newline="") as handle:
        return list(csv.DictReader(handle))


def load_table(paper: str, table: str) -> pd.DataFrame:
    """One transcribed table, every column as text (empty string for a missing value)."""
    import pandas as pd

    return pd.read_csv(table_path(paper, table), dtype=str, keep_default_na=False)


def with_values(table: pd.DataFrame) -> pd.DataFrame:
    """The rows that have a value, with it as a float in column ``v``."""
    present = table[table.value != ""].copy()
    present["v"] = present.value.astype(float)
    return present
