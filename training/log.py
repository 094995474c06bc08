"""Per-step and per-epoch CSV logs of training runs (``train_steps.csv``, ``pretrain_epochs.csv``, ...)."""
from __future__ import annotations

import csv
import os
from typing import Any


class CsvLog:
    """Append-only CSV with a fixed column order.

    ``fields`` (optional) fixes the leading columns from the first row on, whether or not that
    row holds them (e.g. validation columns of epochs without validation); keys outside it are
    appended in the order they first appear. An existing file is continued (a resumed run
    appends to its logs); floats are written with 6 significant digits.
    """

    def __init__(self, path: str, fields: list[str] | None = None) -> None:
        self.path = path
        self.preset = list(fields or [])
        self.fields: list[str] | None = None
        if os.path.isfile(path):
            with open(path, newline="") as f:
                header = next(csv.reader(f), None)
            self.fields = header or None

    def write(self, row: dict[str, Any]) -> None:
        """Append ``row``; keys missing from it are left empty, new keys widen the file."""
        if self.fields is None:
            self.fields = self.preset + [k for k in row if k not in self.preset]
            with open(self.path, "w", newline="") as f:
                csv.writer(f).writerow(self.fields)
        extra = [k for k in row if k not in self.fields]
        if extra:
            self._widen(extra)
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, self.fields).writerow({k: csv_value(row.get(k, "")) for k in self.fields})

    def _widen(self, extra: list[str]) -> None:
        # CSV has one header, so new columns mean rewriting the rows written so far.
        with open(self.path, newline="") as f:
            rows = list(csv.DictReader(f))
        self.fields = list(self.fields) + extra
        with open(self.path, "w", newline="") as f:
            writer = csv.DictWriter(f, self.fields)
            writer.writeheader()
            writer.writerows(rows)


def csv_value(value: Any) -> Any:
    """A log cell: floats to 6 significant digits, everything else as given."""
    return f"{value:.6g}" if isinstance(value, float) else value
