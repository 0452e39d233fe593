"""Loader for the CDNOW purchase log used to validate the CLV models (tests only).

The file is part of the repository (``data/cdnow_master.txt``, described in
``data/README.md``); its location is resolved from this file, so the tests find it
from any working directory.  A missing file raises FileNotFoundError with an
explanation: the acceptance tests must fail, not skip, without their data.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from pathlib import Path

CDNOW_PATH = Path(__file__).resolve().parents[1] / "data" / "cdnow_master.txt"

#: End of the paper's 39-week calibration period (transactions through this date).
CALIBRATION_END = date(1997, 9, 30)


@dataclass(frozen=True, slots=True)
class Transaction:
    customer_id: str
    day: date
    n_cds: int
    amount_cents: int


def load_transactions(path: Path = CDNOW_PATH) -> list[Transaction]:
    """All rows of the CDNOW master file (header skipped), dollars converted to cents exactly.

    Raises FileNotFoundError if the file is absent and ValueError on a malformed row.
    """
    if not path.is_file():
        raise FileNotFoundError(
            f"CDNOW data set not found at {path}. It ships with the repository as "
            "data/cdnow_master.txt (see data/README.md)."
        )
    out: list[Transaction] = []
    with path.open(encoding="ascii") as fh:
        next(fh)  # header
        for lineno, line in enumerate(fh, start=2):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 4:
                raise ValueError(f"{path}:{lineno}: expected 4 columns, got {line!r}")
            cid, ymd, n, dollars = parts
            cents = Decimal(dollars) * 100
            if cents != cents.to_integral_value():
                raise ValueError(f"{path}:{lineno}: amount {dollars!r} is not whole cents")
            day = date(int(ymd[:4]), int(ymd[4:6]), int(ymd[6:8]))
            out.append(Transaction(cid, day, int(n), int(cents)))
    return out


def calibration_stats(
    transactions: list[Transaction], end: date = CALIBRATION_END
) -> dict[str, tuple[int, int, int, int]]:
    """Per-customer ``(x, t_x_days, T_days, repeat_spend_cents)`` as of ``end``.

    As in Fader, Hardie & Lee (2005): only transactions on or before ``end`` count,
    same-day transactions are merged into one purchase day, x = purchase days - 1,
    t_x = last - first purchase day, T = end - first purchase day, and the repeat spend
    is the total over purchase days after the first.  Customers whose first purchase is
    after ``end`` are absent.
    """
    by_day: dict[str, dict[date, int]] = defaultdict(lambda: defaultdict(int))
    for tr in transactions:
        if tr.day <= end:
            by_day[tr.customer_id][tr.day] += tr.amount_cents
    out: dict[str, tuple[int, int, int, int]] = {}
    for cid, days in by_day.items():
        ordered = sorted(days)
        first, last = ordered[0], ordered[-1]
        repeat_spend = sum(days[d] for d in ordered[1:])
        out[cid] = (len(ordered) - 1, (last - first).days, (end - first).days, repeat_spend)
    return out
