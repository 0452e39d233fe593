"""The CLI as a user meets it: --version, replay's streams and rejects, one-line errors.

Every command runs as a real subprocess; no error a user can cause may end in a
Python traceback.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from schemas.codec import dumps, loads
from streams.ports import free_port
from tests.core.factory import at, feedback, purchase

REPO = Path(__file__).resolve().parents[2]


def loyalty(*args: str, stdin: bytes | None = None, env: dict[str, str] | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([sys.executable, "-m", "streams.cli", *args], input=stdin, env=full_env,
                          capture_output=True, timeout=timeout, check=False)


def assert_one_line_error(proc: subprocess.CompletedProcess, code: int, *needles: bytes) -> None:
    assert proc.returncode == code, proc.stderr
    assert b"Traceback" not in proc.stderr, proc.stderr
    for needle in needles:
        assert needle in proc.stderr, proc.stderr


def test_version() -> None:
    from importlib.metadata import version

    proc = loyalty("--version")
    assert proc.returncode == 0
    assert proc.stdout.decode().strip() == f"loyalty {version('loyalty-scorer')}"


def test_replay_rejects_file_has_every_rejected_line_with_number_and_reason(tmp_path: Path) -> None:
    lines = [purchase(at(0), 1_000, order_id="o1"), b"not json", b"",
             b"\xff\xfe", feedback(at(1), 11), purchase(at(2), 500, order_id="o2")]
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"\n".join(lines) + b"\n")
    rejects = tmp_path / "rejects.jsonl"
    proc = loyalty("replay", str(events), "--rejects", str(rejects), "--no-clv")
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.splitlines()) == 1  # stdout: data only
    got = [loads(line) for line in rejects.read_bytes().splitlines()]
    assert [(r["line"], r["reason"]) for r in got] == [
        (2, "invalid_json"), (4, "invalid_encoding"), (5, "out_of_range")]
    assert (got[0]["value"], got[0]["value_encoding"]) == ("not json", "utf-8")
    assert (got[1]["value"], got[1]["value_encoding"]) == ("//4=", "base64")
    assert "nps" in got[2]["detail"]
    summary = loads(proc.stderr.splitlines()[-1])
    assert summary["applied"] == 2 and summary["rejects_file"] == str(rejects)
    assert summary["rejected_lines"] == {"invalid_encoding": [4], "invalid_json": [2], "out_of_range": [5]}


def test_replay_progress_goes_to_stderr_only_when_asked(tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    events.write_bytes(purchase(at(0), 1_000, order_id="o1") + b"\n")
    quiet = loyalty("replay", str(events), "--no-clv")
    assert len(quiet.stderr.splitlines()) == 1  # not a terminal: the summary only
    loud = loyalty("replay", str(events), "--no-clv", "--progress")
    assert loud.stdout == quiet.stdout
    assert b"events folded" in loud.stderr and loads(loud.stderr.splitlines()[-1])["applied"] == 1


def test_replay_honours_the_policy_file_setting(tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    events.write_bytes(purchase(at(0), 10_000, order_id="o1") + b"\n")
    policy = tmp_path / "policy.json"
    policy.write_bytes(dumps({"defaults": {"margin_rate": "0.25"}}))
    proc = loyalty("replay", str(events), "--no-clv", env={"LOYALTY_POLICY_FILE": str(policy)})
    assert proc.returncode == 0, proc.stderr
    assert loads(proc.stdout)["margin_total"] == 2_500
    missing = loyalty("replay", str(events), env={"LOYALTY_POLICY_FILE": str(tmp_path / "nope.json")})
    assert_one_line_error(missing, 2, b"loyalty replay: cannot read policy file", b"nope.json")


def test_invalid_setting_names_the_variable() -> None:
    proc = loyalty("tail", "rewards", env={"LOYALTY_PARTITIONS": "abc"})
    assert_one_line_error(proc, 2, b"loyalty tail: invalid setting LOYALTY_PARTITIONS='abc'")
    assert len(proc.stderr.splitlines()) == 1


def test_tail_with_the_broker_down_says_so(tmp_path: Path) -> None:
    port = free_port()  # nobody listens there
    proc = loyalty("tail", "rewards", env={"LOYALTY_BROKER": f"kafka://127.0.0.1:{port}"})
    assert_one_line_error(proc, 1, b"loyalty tail: cannot reach the Kafka broker at",
                          f"127.0.0.1:{port}".encode())


def test_worker_with_a_bad_policy_file_fails_before_touching_anything(tmp_path: Path) -> None:
    policy = tmp_path / "policy.json"
    policy.write_bytes(dumps({"defaults": {"curency": "EUR"}}))
    data = tmp_path / "data"
    proc = loyalty("worker", env={"LOYALTY_POLICY_FILE": str(policy), "LOYALTY_DATA_DIR": str(data),
                                  "LOYALTY_BROKER": "kafka://127.0.0.1:1"})
    assert_one_line_error(proc, 2, b"loyalty worker:", b"curency")
    assert len(proc.stderr.splitlines()) == 1 and not data.exists()


def test_worker_on_a_taken_port_says_which(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        proc = loyalty("worker", env={"LOYALTY_WEB_PORT": str(port), "LOYALTY_DATA_DIR": str(tmp_path),
                                      "LOYALTY_BROKER": "kafka://127.0.0.1:1"})
    assert_one_line_error(proc, 1, f"cannot listen on 127.0.0.1:{port}".encode(), b"LOYALTY_WEB_PORT")


@pytest.mark.parametrize("command", [("replay",), ("clv", "fit")])
def test_unreadable_input_is_a_message(tmp_path: Path, command: tuple[str, ...]) -> None:
    folder = tmp_path / "a-folder"
    folder.mkdir()
    proc = loyalty(*command, str(tmp_path / "missing.jsonl"))
    assert_one_line_error(proc, 2, b"cannot read", b"missing.jsonl")
    proc = loyalty(*command, str(folder))
    assert proc.returncode != 0 and b"Traceback" not in proc.stderr, proc.stderr


def test_replay_command_counts_like_the_core_replay(tmp_path: Path) -> None:
    """The command's numbered fold and scoring.replay.fold_lines agree on every count."""
    from datetime import UTC, datetime

    from schemas.policy import PolicyBook
    from scoring.replay import fold_lines
    from streams.synthetic import generate, lines

    data = lines(generate(seed=3, customers_per_shop=40, end=datetime(2026, 1, 1, tzinfo=UTC)))
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"".join(line.replace(b"\n", b" ") + b"\n" for line in data))
    proc = loyalty("replay", str(events), "--no-clv")
    summary = loads(proc.stderr.splitlines()[-1])
    core = fold_lines([line.replace(b"\n", b" ") for line in data], policies=PolicyBook()).summary()
    assert summary["invalid"] and summary["rejected"]  # the synthetic faults are there
    assert {k: summary[k] for k in core} == core
    from scoring.replay import replay

    expected = replay([line.replace(b"\n", b" ") for line in data], policies=PolicyBook(), with_clv=False)
    assert [loads(row) for row in proc.stdout.splitlines()] == loads(dumps(expected))
    counts = {**summary["invalid"], **summary["rejected"]}
    assert {k: len(v) for k, v in summary["rejected_lines"].items()} == {
        k: min(n, 10) for k, n in counts.items()}


@pytest.mark.parametrize("command", ["worker", "bench", "replay", "broker", "tail", "demo", "topics"])
def test_every_option_has_help_and_no_development_jargon(command: str) -> None:
    """Every option of the command's --help says something, and nothing refers to our issues."""
    import argparse

    from streams.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    for action in sub._actions:
        if action.option_strings and not isinstance(action, argparse._HelpAction):
            assert action.help, f"loyalty {command} {action.option_strings[0]} has no help text"
    text = loyalty(command, "--help").stdout.decode()
    assert "issue" not in text.lower() and "this round" not in text.lower()


def test_replay_shows_progress_when_stderr_is_a_terminal(tmp_path: Path) -> None:
    import pty

    events = tmp_path / "events.jsonl"
    events.write_bytes(purchase(at(0), 1_000, order_id="o1") + b"\n")
    controller, terminal = pty.openpty()
    try:
        proc = subprocess.run([sys.executable, "-m", "streams.cli", "replay", str(events), "--no-clv"],
                              env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE,
                              stderr=terminal, timeout=120, check=False)
        os.close(terminal)
        seen = b""
        while True:
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # EIO: the terminal's other side is closed and drained
                break
            if not chunk:
                break
            seen += chunk
    finally:
        os.close(controller)
    assert proc.returncode == 0 and loads(proc.stdout)["purchase_count"] == 1
    assert b"events folded" in seen and b'"applied":1' in seen


def test_unwritable_outputs_are_a_message(tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    events.write_bytes(purchase(at(0), 1_000, order_id="o1") + b"\n")
    nowhere = tmp_path / "no-such-dir"
    proc = loyalty("replay", str(events), "--no-clv", "--rejects", str(nowhere / "r.jsonl"))
    assert_one_line_error(proc, 2, b"loyalty replay: cannot write", b"r.jsonl")
    proc = loyalty("replay", str(events), "--no-clv", "--shops-out", str(nowhere / "shops.json"))
    assert_one_line_error(proc, 2, b"loyalty replay: No such file or directory", b"shops.json")
