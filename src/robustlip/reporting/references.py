"""Published numbers as data: the reference files of ``conf/references/`` (one per paper or leaderboard).

A reproduction is judged against numbers someone published, so those numbers live in the project,
each with where it comes from, instead of in a reader's memory. A file names its paper (``paper``,
``citation``, ``protocol``) and, per robustlip preset (``conf/experiment/<preset>.yaml``, matched by a
run's ``task_name``), the published table (``table``, ``block``), its columns as results.json keys
mapped to the paper's headers, and rows: the method as robustlip's reports name it (``Objective.label``),
optionally the dropout cell the row needs, and one value per column. The source of a number is thus its
file's citation, the preset's table and block (or the row's own ``source``), the row and the column.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from robustlip.runs.config import config_dir


@dataclass(frozen=True)
class Published:
    """One published number and where it was printed."""

    paper: str
    preset: str
    method: str
    dropout: str | None
    column: str
    value: float
    #: ``Table 2 · CNN1 · row TRADES(β=6) · column adv test acc`` or a leaderboard file and field.
    source: str
    note: str = ""


def references_dir() -> Path:
    return config_dir() / "references"


def available() -> list[str]:
    """The reference files shipped in conf/references/, by name (``yang2020``)."""
    return sorted(p.stem for p in references_dir().glob("*.yaml"))


def _path(name: str | Path) -> Path:
    path = Path(name)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    path = references_dir() / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(f"report.references: unknown reference {str(name)!r}; allowed: {available()} or a .yaml path")
    return path


def load_reference(name: str | Path) -> list[Published]:
    """Every number of one reference file, checked: each row has one value per column of its preset."""
    path = _path(name)
    data = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    paper = str(data.get("paper") or path.stem)
    if not data.get("citation"):
        raise ValueError(f"{path}: no citation; every reference file says where its numbers come from")
    numbers: list[Published] = []
    for preset, block in (data.get("presets") or {}).items():
        columns = dict(block.get("columns") or {})
        if not columns or not block.get("table"):
            raise ValueError(f"{path}: preset {preset} needs `table` and `columns`")
        for row in block.get("rows") or []:
            values = list(row.get("values") or [])
            if len(values) != len(columns):
                raise ValueError(f"{path}: {preset} row {row.get('method')!r} has {len(values)} values for "
                                 f"{len(columns)} columns {list(columns)}")
            where = row.get("source") or f"{block['table']} · {block.get('block', '')}".rstrip(" ·")
            dropout = None if row.get("dropout") is None else str(row["dropout"])
            for (column, printed), value in zip(columns.items(), values):
                if value is None:  # a number that cannot be sourced stays out
                    continue
                cell = f"row {row['method']}" + (f" (dropout {dropout})" if dropout is not None else "")
                numbers.append(Published(paper, str(preset), str(row["method"]), dropout, str(column), float(value),
                                         f"{where} · {cell} · column {printed}", str(row.get("note") or "")))
    return numbers


def load_references(names: Iterable[str | Path]) -> list[Published]:
    return [number for name in names for number in load_reference(name)]


def presets_of(numbers: Sequence[Published]) -> list[str]:
    return sorted({n.preset for n in numbers})


def matching(numbers: Sequence[Published], preset: str, method: str, dropout: str) -> list[Published]:
    """The published numbers of one report row: same preset and method; the dropout cell where the paper has one."""
    return [n for n in numbers if n.preset == preset and n.method == method
            and (n.dropout is None or n.dropout == dropout)]


def as_dict(number: Published) -> dict[str, Any]:
    return {"paper": number.paper, "preset": number.preset, "method": number.method, "dropout": number.dropout,
            "column": number.column, "value": number.value, "source": number.source, "note": number.note}
