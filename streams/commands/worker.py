"""Run the streaming scorer (one Faust worker) with the LOYALTY_* settings.

  loyalty worker [--web-port N] [--data-dir DIR] [--loglevel info]

Creates any missing project topics (and the internal rekey topic) first, then
runs until SIGINT/SIGTERM, when it stops gracefully: the producer is flushed
and the offsets committed.

Crash recovery: a marker file in the app's data directory exists while the
worker runs and is removed only after a graceful stop. If it is found at
startup, the previous run died (kill -9, OOM, power loss) and the local
RocksDB stores may hold writes whose changelog records never reached Kafka.
The local stores are then deleted and rebuilt from the changelogs, and the
uncommitted input records are redelivered and applied again: the state ends
exactly as if the crash had not happened.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import sys
from pathlib import Path
from typing import Any


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the worker's options."""
    parser.add_argument("--web-port", type=int, default=None,
                        help="HTTP API / metrics port (default: LOYALTY_WEB_PORT, 6066)")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="table data directory (default: LOYALTY_DATA_DIR, ./var/data)")
    parser.add_argument("--loglevel", default="info",
                        choices=["debug", "info", "warning", "error"],
                        help="lowest level of the log lines written to stderr (default: info)")


def check_port_free(host: str, port: int) -> None:
    """Raise CommandError if ``host:port`` cannot be bound (another process listens on it).

    Checked before Faust starts, whose own bind failure is a traceback deep in
    its startup. SO_REUSEADDR as aiohttp sets it, so a port in TIME_WAIT counts
    as free. A process that takes the port between this check and Faust's bind
    still fails Faust's way.
    """
    import socket

    from streams.commands import CommandError

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise CommandError(f"cannot resolve LOYALTY_WEB_HOST {host!r}: {exc.strerror}", 2) from None
    family, kind, proto, _, addr = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(addr)
        except OSError as exc:
            raise CommandError(
                f"cannot listen on {host}:{port} ({exc.strerror}): another process uses the port; "
                "choose another with --web-port or LOYALTY_WEB_PORT") from None


def marker_path(data_dir: Path) -> Path:
    """The "worker running" marker inside an app's data directory."""
    return data_dir / ".running"


def prepare_data_dir(data_dir: Path) -> bool:
    """Create ``data_dir``; wipe it first if the marker shows an unclean stop.

    Returns True when the local stores were discarded.
    """
    marker = marker_path(data_dir)
    wiped = False
    if marker.exists():
        shutil.rmtree(data_dir, ignore_errors=True)
        wiped = True
    data_dir.mkdir(parents=True, exist_ok=True)
    marker.write_text("worker running; removed on graceful stop\n")
    return wiped


def run(args: argparse.Namespace) -> int:
    """Run the worker until stopped. Returns 1 on a startup error."""
    import asyncio

    import faust

    from schemas.policy import PolicyBook
    from streams import compat
    from streams.app import app_data_dir, create_service, group_instance_id
    from streams.security import client_kwargs
    from streams.settings import get_settings
    from streams.topics import all_topic_specs, ensure_topics

    settings = get_settings()
    update: dict[str, Any] = {}
    if args.web_port is not None:
        update["web_port"] = args.web_port
    if args.data_dir is not None:
        update["data_dir"] = args.data_dir
    if update:
        settings = settings.model_copy(update=update)
    # Fail on a bad policy file or a taken port before touching the broker or the data dir.
    PolicyBook.load(settings.policy_file)
    check_port_free(settings.web_host, settings.web_port)
    logging.basicConfig(level=args.loglevel.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("loyalty.worker")
    try:
        _, mismatches = asyncio.run(ensure_topics(settings.bootstrap_servers,
                                                  all_topic_specs(settings),
                                                  settings.replication_factor,
                                                  client=client_kwargs(settings)))
    except Exception as exc:  # noqa: BLE001 - report and exit, do not trace
        print(f"loyalty worker: cannot reach the broker at {settings.broker}: {exc!r}",
              file=sys.stderr)
        return 1
    for m in mismatches:
        print(f"loyalty worker: {m}", file=sys.stderr)
    if mismatches:
        return 1
    try:
        compat.check()  # before anything is patched: an upgrade fails here, loudly
    except compat.CompatError as exc:
        print(f"loyalty worker: {exc}", file=sys.stderr)
        return 1
    data_dir = app_data_dir(settings)
    if prepare_data_dir(data_dir):
        log.warning("previous run of %s did not stop cleanly: local stores discarded, "
                    "rebuilding from the changelogs", settings.app_id)
        if group_instance_id(settings) is None:
            # Dynamic membership: the dead process is still a group member until
            # its session expires. Joining now means two rebalances in a row
            # (join, then eviction), and Faust has known bugs with records
            # prefetched across back-to-back rebalances (faust-streaming#216/
            # #221). Waiting it out costs seconds. With static membership (the
            # default) the restarted process takes the dead one's place in the
            # group: no rebalance at all, so no wait.
            import time

            from streams.app import SESSION_TIMEOUT_S

            time.sleep(SESSION_TIMEOUT_S + 1.0)
    service = create_service(settings)
    from streams.metrics import add_process_metrics

    add_process_metrics(service.context.metrics)  # process_* / python_* series on /metrics

    from streams.collector import Collector

    # States hold no cycles: the collector need not walk them (streams/collector.py).
    Collector(service.context.metrics, settings.gc_reclaim_interval_s).install(
        service.app, service.processor)

    from streams.loop_watch import LoopWatch

    # Whether (and where) the event loop stalls: every event waits meanwhile.
    LoopWatch(service.context.metrics, settings.loop_stall_report_s).install(service.app)

    class Worker(faust.Worker):
        def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
            # Faust's terminal spinner sets the root logger to DEBUG so that it
            # spins on every record: every aiokafka/Faust debug call then builds
            # a log record (8% of CPU in processing, 17% in changelog recovery,
            # measured with py-spy). No spinner, and the chosen level stands.
            self.spinner = None
            super().on_setup_root_logger(logger, level)
            # A broker outage makes aiokafka/Faust log the same error thousands of
            # times per second: one line per cause per interval, with a count.
            from streams.logfilter import install

            install(settings.log_repeat_interval_s)

        def _on_sigusr2(self) -> None:
            # mode enters pdb on SIGUSR2: in a service without a terminal that
            # stops the event loop for good. SIGUSR1 (mode's stack dump) stays.
            logging.getLogger(__name__).warning(
                "SIGUSR2 ignored (kill -USR1 writes every thread's and task's stack to the log)")

        def stop_and_shutdown(self) -> None:
            super().stop_and_shutdown()
            # Reached only after a graceful stop (producer flushed, offsets committed).
            marker_path(data_dir).unlink(missing_ok=True)
            reason = service.context.stop_reason
            if reason is not None:  # stopped itself (ServiceContext.stop_for_newer_state)
                print(f"loyalty worker: stopped: {reason}", file=sys.stderr)
                raise SystemExit(1)

    worker = Worker(service.app, loglevel=args.loglevel, quiet=True)
    # The same graceful stop as an operator's SIGTERM.
    service.context.stop_worker = lambda: os.kill(os.getpid(), signal.SIGTERM)
    worker.execute_from_commandline()
    return 0  # pragma: no cover - execute_from_commandline exits
