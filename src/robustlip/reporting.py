"""Printing results the way the paper's tables show them."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from robustlip.results import RESULT_KEYS


def print_results_table(metrics: dict[str, float], title: str = "results") -> None:
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in RESULT_KEYS:
        if key in metrics:
            unit = "" if "lipschitz" in key else " %"
            table.add_row(key, f"{metrics[key]:.2f}{unit}")
    Console().print(table)
