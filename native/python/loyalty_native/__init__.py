"""The loyalty scorer's fold in Rust (``scoring.native`` wraps it)."""

import os

# The extension allocates with mimalloc, which reads its options when this
# library loads. By default it advises the kernel to back its segments with
# transparent huge pages; a segment's memory is purged 10 ms after it is freed
# and faulted back on reuse, and each fault then has the kernel zero a whole
# 2 MiB page: 9-12 % of the worker's CPU in a throughput run (perf, README
# "Performance"). Off, unless the environment says otherwise; it turns THP off
# for the process, where only mimalloc asks for it.
os.environ.setdefault("MIMALLOC_ALLOW_THP", "0")

from .loyalty_native import *  # noqa: E402,F403
