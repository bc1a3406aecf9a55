"""One figure of the committed cross-dataset transfer tables (the paper's Table 3): per pair, fidelity (top) and
accuracy (bottom, where the eval split has labels) against the FLOPs fraction, with fits from the eval data set
itself and fits from the other data set.

    python studies/transfer_plot.py      # reads studies/reports/transfer/*.md, writes transfer.png there

Each table is the one ``studies/transfer_table.py`` printed: ``spans | FLOPs`` then, per quality, the column of
fits from the eval data set followed by the column of fits from the other data set.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure  # drawn without pyplot: no backend to choose, no global state

FOLDER = Path(__file__).resolve().parent / "reports" / "transfer"


def read_table(path: Path) -> pd.DataFrame:
    """The first markdown table of ``path`` as a data frame (numbers parsed)."""
    rows: list[str] = []
    for line in path.read_text().splitlines():  # the first table only: transfer_table.py writes a second, with SEs
        if line.startswith("|"):
            rows.append(line)
        elif rows:
            break
    if len(rows) < 3:
        raise SystemExit(f"transfer_plot: error: no table in {path}")
    cells = [[c.strip() for c in row.strip().strip("|").split("|")] for row in rows]
    frame = pd.DataFrame(cells[2:], columns=cells[0])
    for name in frame.columns[1:]:  # every column but the spans is a number
        frame[name] = pd.to_numeric(frame[name], errors="coerce")
    return frame


def columns(frame: pd.DataFrame, quality: str) -> tuple[str, str] | None:
    """(own-data fits, other-data fits) columns of one quality, in the table's order."""
    found = [c for c in frame.columns if c.startswith(f"{quality},")]
    return (found[0], found[1]) if len(found) == 2 else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folder", type=Path, default=FOLDER)
    args = parser.parse_args(argv)
    tables = sorted(args.folder.glob("*.md"))
    if not tables:
        print(f"transfer_plot: error: no tables in {args.folder}", file=sys.stderr)
        return 2
    fig = Figure(figsize=(3.6 * len(tables), 6.2))
    axes = fig.subplots(2, len(tables), squeeze=False, sharex=True)
    for col, path in enumerate(tables):
        frame = read_table(path).sort_values("FLOPs")
        source, target = path.stem.split("_to_")
        for row, quality in enumerate(("fidelity", "accuracy")):
            ax = axes[row][col]
            pair = columns(frame, quality)
            if pair is None or frame[pair[0]].isna().all():
                ax.text(0.5, 0.5, f"no {quality}\n(unlabelled eval split)", ha="center", va="center",
                        transform=ax.transAxes)
                ax.set_yticks([])
            else:
                ax.plot(frame["FLOPs"], frame[pair[0]], "o-", label=f"fits from {target}")
                ax.plot(frame["FLOPs"], frame[pair[1]], "s--", label=f"fits from {source}")
                ax.set_ylabel(quality)
                ax.legend(fontsize=7)
            if row == 0:
                ax.set_title(f"{source} → {target}", fontsize=10)
            if row == 1:
                ax.set_xlabel("FLOPs fraction")
    fig.tight_layout()
    out = args.folder / "transfer.png"
    fig.savefig(out, dpi=110)
    print(f"transfer_plot: wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
