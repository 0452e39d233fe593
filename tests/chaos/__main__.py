"""``python -m tests.chaos [--short] [--only NAME ...]``: run the chaos scenarios, one
report line each; exit status 1 if any scenario found a difference."""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

from tests import leftovers
from tests.chaos.scenarios import FULL, SCENARIOS, SHORT


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__)
    parser.add_argument("--short", action="store_true", help="the CI profile (fewer kills)")
    parser.add_argument("--only", nargs="+", choices=sorted(SCENARIOS), default=None)
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--keep", action="store_true",
                        help="keep the scenario directories and topics")
    args = parser.parse_args(argv)
    # The runner's own producer retries through the broker scenario's outage:
    # one line per scenario, not thousands of aiokafka connection errors.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    profile = SHORT if args.short else FULL
    started = time.monotonic()
    failed = 0
    root = tempfile.mkdtemp(prefix="chaos-")
    try:
        for name in args.only or [n for n in SCENARIOS if n not in profile.skip]:
            tmp = Path(root) / name
            tmp.mkdir()
            mark = leftovers.mark()
            out = SCENARIOS[name](args.bootstrap, tmp, profile)
            if args.keep:
                leftovers.owned_since(mark)  # kept: only forget them
            else:  # the scenario's topics (tests/leftovers.py: why)
                leftovers.delete_registered_since(mark)
            print(out.line(), flush=True)
            if not out.ok:
                failed += 1
                for example in out.examples:
                    print(f"    {example}", flush=True)
                print(f"    logs: {tmp}" if args.keep else "    (--keep keeps the logs)",
                      flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print(f"chaos ({profile.name}): {'FAILED' if failed else 'passed'} in "
          f"{time.monotonic() - started:.0f}s", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
