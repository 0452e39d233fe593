"""What `loyalty demo` prints: its progress count, the broker hint and the outputs hint."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from streams.commands.demo import _processed, broker_start_message, outputs_hint
from streams.settings import Settings


@pytest.fixture
def metrics_server() -> Iterator[tuple[str, CollectorRegistry]]:
    """A real HTTP /metrics endpoint in Prometheus text format over a fresh registry."""
    registry = CollectorRegistry()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            body = generate_latest(registry)
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", registry
    finally:
        server.shutdown()
        server.server_close()


def test_progress_counts_a_rekeyed_record_once(metrics_server) -> None:
    base, registry = metrics_server
    # the worker's metric names (streams/metrics.py)
    latency = Histogram("loyalty_processing_seconds", "per record", registry=registry)
    rekeyed = Counter("loyalty_rekeyed", "forwarded", ["topic"], registry=registry)
    for _ in range(10):
        latency.observe(0.001)
    for _ in range(3):  # three of the ten were the forwarding hop of a misrouted record
        rekeyed.labels("loyalty.purchases").inc()
    assert _processed(base) == 7


def test_maven_is_mentioned_only_when_the_jars_are_missing() -> None:
    assert "Maven" not in broker_start_message("127.0.0.1", 9092, jars_cached=True)
    assert "Maven" in broker_start_message("127.0.0.1", 9092, jars_cached=False)


def test_outputs_hint_lists_topics_separated_by_spaces() -> None:
    settings = Settings(topic_transitions="d.t", topic_rewards="d.r", topic_scores="d.s",
                        topic_dead_letter="d.dl")
    hint = outputs_hint(settings)
    assert "|" not in hint
    assert hint.endswith("(TOPIC one of: d.t d.r d.s d.dl)")
