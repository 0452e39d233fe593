"""Run a local single-node Apache Kafka (KRaft) for development and CI.

  loyalty broker start    start it (no-op if running); returns once it serves metadata
  loyalty broker stop     stop the broker this directory started (SIGTERM, then SIGKILL)
  loyalty broker status   exit 0 if a broker answers on the port, 3 if not
  loyalty broker logs     show (-n N) or follow (-f) the broker log

The jars are resolved once with Maven into LOYALTY_KAFKA_CACHE_DIR; state lives
in LOYALTY_BROKER_DIR (default ./var/broker). --port and --dir run a second,
independent instance (its controller uses port+1).

Exit codes: 0 ok, 1 error (message on stderr), 3 `status`: broker down.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EXIT_DOWN = 3


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the start/stop/status/logs subcommands."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--port", type=int, default=None,
                        help="broker port (default: port of LOYALTY_BROKER, 9092); "
                             "the controller listens on port+1")
    common.add_argument("--dir", type=Path, default=None,
                        help="state directory of this instance (default: LOYALTY_BROKER_DIR, "
                             "./var/broker)")
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = sub.add_parser("start", parents=[common], help="start the broker and wait until it serves")
    p.add_argument("--timeout", type=float, default=None,
                   help="seconds to wait for the broker (default: LOYALTY_BROKER_START_TIMEOUT_S, 60)")
    p = sub.add_parser("stop", parents=[common], help="stop the broker started from --dir")
    p.add_argument("--timeout", type=float, default=30.0,
                   help="seconds to wait after SIGTERM before SIGKILL (default 30)")
    sub.add_parser("status", parents=[common], help="exit 0 if the broker is up, 3 if down")
    p = sub.add_parser("logs", parents=[common], help="print the broker log")
    p.add_argument("-n", type=int, default=50, help="number of lines (default 50)")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")


def _err(message: str) -> None:
    print(f"loyalty broker: {message}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    """Execute one broker action; see the module docstring for exit codes."""
    import dataclasses

    from streams import broker
    from streams.settings import get_settings

    settings = get_settings()
    cfg = broker.BrokerConfig.from_settings(settings, port=args.port, directory=args.dir)
    if getattr(args, "timeout", None) is not None and args.action == "start":
        cfg = dataclasses.replace(cfg, start_timeout_s=args.timeout)

    try:
        if args.action == "start":
            result = broker.start(cfg, echo=_err)
            if result.already_running:
                print(f"broker already running on {cfg.bootstrap} (pid {result.pid}, "
                      f"dir {cfg.dir}); nothing to do")
            else:
                print(f"broker up on {cfg.bootstrap} (pid {result.pid}, dir {cfg.dir}) "
                      f"in {result.seconds:.1f}s")
            return 0
        if args.action == "stop":
            pid = broker.stop(cfg, grace_s=args.timeout, echo=_err)
            if pid is None:
                print(f"no broker running from {cfg.dir}")
            else:
                print(f"broker pid {pid} stopped")
            return 0
        if args.action == "status":
            st = broker.status(cfg)
            if st.up:
                owner = (f"pid {st.pid}, dir {cfg.dir}" if st.pid and st.ours
                         else "not started from " + str(cfg.dir))
                print(f"up: {cfg.bootstrap} cluster {st.cluster.cluster_id} ({owner})")
                return 0
            if st.pid is not None:
                print(f"down: pid {st.pid} is running but {cfg.bootstrap} does not answer "
                      f"(starting, or hung: see `loyalty broker logs`)")
            else:
                print(f"down: nothing answers on {cfg.bootstrap}")
            return EXIT_DOWN
        if args.action == "logs":
            lines = broker.tail_lines(cfg.server_log, args.n)
            if not lines and not cfg.server_log.exists() and not args.follow:
                _err(f"no log yet at {cfg.server_log}")
                return 1
            for line in lines:
                print(line)
            if args.follow:
                sys.stdout.flush()
                broker.follow(cfg.server_log, echo=lambda s: print(s, flush=True))
            return 0
    except broker.BrokerError as exc:
        _err(str(exc))
        return 1
    raise AssertionError(f"unknown action {args.action!r}")
