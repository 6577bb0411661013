"""robustlip-tsipras: the tables and figures of Tsipras et al. (ICLR 2019) from finished runs.

    robustlip-tsipras toy DIR...         measured accuracies next to the closed forms (experiment=tsipras_toy)
    robustlip-tsipras train_size DIR...  test accuracy against train size, natural vs AT, seeds as error bars
    robustlip-tsipras features DIR...    linear weights against pixel-label correlation; masked training vs AT

Each reads the run directories below DIR that ``multirun_sweeps/tsipras_*.sh`` leave and writes
``report.md``, ``table.csv`` and PNG figures into ``out_dir=...`` (default ``<first DIR>/tsipras_<what>``);
the reports themselves are :mod:`robustlip.reporting.tsipras`. Like robustlip-report it is not a Hydra
app: it writes no run directory of its own. docs/tsipras.md shows every command with its output.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from robustlip.cli import plain_help
from robustlip.core.errors import print_error


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(plain_help(__doc__))
        return 0
    from robustlip.core.files import write_text_atomic
    from robustlip.reporting.tsipras import REPORTS, ReportError

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    what, rest = argv[0], argv[1:]
    options = dict(a.split("=", 1) for a in rest if "=" in a)
    dirs = [a for a in rest if "=" not in a]
    try:
        if what not in REPORTS:
            raise ReportError(f"robustlip-tsipras {what!r}: choose one of {', '.join(REPORTS)}")
        unknown = sorted(set(options) - {"out_dir"})
        if unknown:
            raise ReportError(f"robustlip-tsipras: unknown option {unknown[0]}=...; the only option is out_dir=DIR")
        if not dirs:
            raise ReportError(f"robustlip-tsipras {what}: give at least one run or sweep directory")
        for d in dirs:
            if not Path(d).is_dir():
                raise ReportError(f"robustlip-tsipras {what}: no such directory: {d}")
        out_dir = Path(options.get("out_dir") or Path(dirs[0]) / f"tsipras_{what}")
        report = REPORTS[what](dirs, out_dir)
    except (ReportError, FileNotFoundError) as exc:
        print_error(str(exc))
        return 2
    write_text_atomic(out_dir / "report.md", report["markdown"] + "\n")
    print(report["markdown"])
    print(f"wrote {out_dir / 'report.md'}, table.csv" + "".join(f", {p.name}" for p in report["figures"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
