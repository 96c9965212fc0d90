"""The benchmark command runs end to end on a tiny window and prints its tables.

Timings are never asserted: only that every question gets an answer with the right counts.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).parent.parent / "bench" / "run.py"


def table_row(output: str, first_cell: str, header_word: str) -> list[str]:
    """The cells of the row starting with ``first_cell`` in the table whose header names
    ``header_word``."""
    tables = output.split("\n\n")
    table = next(t for t in tables if t.startswith("|") and header_word in t.splitlines()[0])
    for line in table.splitlines()[2:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if cells[0] == first_cell:
            return cells
    raise AssertionError(f"no row {first_cell!r} in the table of {header_word!r}:\n{table}")


def test_benchmark_measures_a_small_window_and_prints_every_table() -> None:
    finished = subprocess.run(
        [sys.executable, str(BENCH), "--sizes", "200", "--runs", "1", "--status-sample", "20"],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )

    assert finished.returncode == 0, finished.stderr
    output = finished.stdout
    assert output.startswith("Machine: ")
    # One page holds the whole window; the exporter also reads / and /whoami.
    scan = table_row(output, "200", "floor requests")
    assert scan[1:3] == ["3", "1"]
    assert float(scan[3]) > 0 and float(scan[4]) > 0
    status = table_row(output, "200", "sampled calls")
    assert status[1] == "20" and status[3] == "200"
    scrape = table_row(output, "200", "render ms, cap")
    # 200 jobs are below the default cap, so capped and uncapped renders are the same size.
    assert scrape[3] == scrape[6]
    assert float(scrape[8]) >= float(scrape[7]) > 0
