"""A local single-node Apache Kafka (KRaft combined mode) for development and CI.

The broker is a plain JVM process started from jars that Maven resolves into
a cache directory outside the repository (``settings.kafka_cache_dir``); no
Docker, no Kafka distribution tarball. All state of one broker instance lives
in one directory (``settings.broker_dir``, overridable so tests can run a
second, independent instance)::

    <dir>/server.properties   generated on every start from the settings
    <dir>/log4j.properties    generated; points the broker log into <dir>/logs
    <dir>/broker.pid          pid of the JVM we started
    <dir>/broker.lock         flock serialising start/stop of this instance
    <dir>/logs/server.log     the broker's log4j output (rolled at 10 MB x 3)
    <dir>/logs/stdout.log     the JVM's stdout/stderr (crashes, bad flags)
    <dir>/kraft-data/         formatted once; topic data and KRaft metadata

Guarantees:

* :func:`start` returns only once the broker answers a Kafka Metadata request
  with itself registered (a TCP connect is not enough: the port opens before
  the broker can serve). On timeout, early exit or interruption it kills the
  process it started, removes the pid file and raises :class:`BrokerError`
  carrying the last log lines.
* :func:`start` on a running instance is a no-op; concurrent starts of the
  same instance are serialised by a file lock, so at most one JVM runs per
  directory.
* :func:`stop` only ever signals the pid from our pid file, and only after
  checking that the process command line contains ``kafka.Kafka`` and this
  instance's ``server.properties`` path (a reused pid is never killed). A
  stale pid file is removed.
* Maven is only needed when the jar cache is missing; the cache is filled
  into a temporary directory and renamed, so an interrupted download never
  leaves a half-populated cache behind.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from streams.settings import Settings

Echo = Callable[[str], None]

# Package data (pyproject.toml), so a non-editable install (`pip install .`) has it too.
POM_PATH = Path(__file__).resolve().parent / "kafka" / "pom.xml"
JARS_STAMP = ".complete"
MAIN_CLASS = "kafka.Kafka"


class BrokerError(Exception):
    """The local broker could not be started, stopped or inspected."""


class JavaNotFoundError(BrokerError):
    """No ``java`` executable (JAVA_HOME or PATH)."""


class MavenNotFoundError(BrokerError):
    """The jar cache is empty and no ``mvn`` executable is available to fill it."""


class PortInUseError(BrokerError):
    """The broker or controller port is taken by a process that is not this instance."""


class BrokerStartError(BrokerError):
    """The broker process exited early or never answered a metadata request."""


@dataclass(frozen=True)
class BrokerConfig:
    """Everything needed to run one local broker instance."""

    host: str
    port: int
    dir: Path
    jars_dir: Path
    kafka_version: str
    heap: str
    partitions: int
    start_timeout_s: float

    @classmethod
    def from_settings(
        cls, settings: Settings, *, port: int | None = None, directory: Path | None = None
    ) -> BrokerConfig:
        """Build the config from settings; ``port``/``directory`` override them (tests)."""
        return cls(
            host="127.0.0.1",  # the dev broker never listens beyond loopback
            port=port if port is not None else settings.broker_port,
            dir=(directory if directory is not None else settings.broker_dir).resolve(),
            jars_dir=settings.kafka_jars_dir.expanduser().resolve(),
            kafka_version=settings.kafka_version,
            heap=settings.broker_heap,
            partitions=settings.partitions,
            start_timeout_s=settings.broker_start_timeout_s,
        )

    @property
    def controller_port(self) -> int:
        """The KRaft controller listener: always the broker port + 1."""
        return self.port + 1

    @property
    def bootstrap(self) -> str:
        """``host:port`` for Kafka clients."""
        return f"{self.host}:{self.port}"

    @property
    def properties_path(self) -> Path:
        return self.dir / "server.properties"

    @property
    def log4j_path(self) -> Path:
        return self.dir / "log4j.properties"

    @property
    def pid_path(self) -> Path:
        return self.dir / "broker.pid"

    @property
    def lock_path(self) -> Path:
        return self.dir / "broker.lock"

    @property
    def logs_dir(self) -> Path:
        return self.dir / "logs"

    @property
    def server_log(self) -> Path:
        return self.dir / "logs" / "server.log"

    @property
    def stdout_log(self) -> Path:
        return self.dir / "logs" / "stdout.log"

    @property
    def data_dir(self) -> Path:
        return self.dir / "kraft-data"


@dataclass(frozen=True)
class ClusterInfo:
    """What a Metadata response told us."""

    cluster_id: str | None
    controller_id: int
    brokers: list[tuple[int, str, int]]


@dataclass(frozen=True)
class BrokerStatus:
    """State of one local instance: our process (if any) and whether the port answers."""

    pid: int | None
    cluster: ClusterInfo | None
    ours: bool  # the answering cluster is the one formatted in our data dir

    @property
    def up(self) -> bool:
        """True when a broker answers metadata requests on the configured port."""
        return self.cluster is not None


# --------------------------------------------------------------------------------------
# Kafka wire protocol: a Metadata v4 request, enough to know the broker serves.
# Stdlib only, so the CLI, the Makefile and the test fixtures can probe quickly
# without an event loop. v4 is supported from Kafka 1.0 through 4.x.
# --------------------------------------------------------------------------------------


def _read_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed by broker")
        buf += chunk
    return bytes(buf)


def probe_metadata(host: str, port: int, timeout: float = 2.0) -> ClusterInfo | None:
    """Send one Kafka Metadata (v4) request; return the answer or None.

    Returns None on any connection or protocol failure, and also when the
    broker answers but lists no registered broker yet (still starting). Never
    raises for network errors.
    """
    client_id = b"loyalty-probe"
    correlation_id = 0x10Ca1
    body = struct.pack(">hhih", 3, 4, correlation_id, len(client_id)) + client_id
    body += struct.pack(">ib", 0, 0)  # topics: empty array (brokers only); no auto-create
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(struct.pack(">i", len(body)) + body)
            (size,) = struct.unpack(">i", _read_exact(sock, 4))
            if not 0 < size < 1 << 20:
                return None
            data = _read_exact(sock, size)
    except (OSError, ConnectionError):
        return None
    try:
        return _parse_metadata_v4(data, correlation_id)
    except (struct.error, ValueError, UnicodeDecodeError):
        return None


def _parse_metadata_v4(data: bytes, correlation_id: int) -> ClusterInfo | None:
    pos = 0

    def take(fmt: str) -> int:
        nonlocal pos
        (value,) = struct.unpack_from(fmt, data, pos)
        pos += struct.calcsize(fmt)
        return int(value)

    def string() -> str | None:
        nonlocal pos
        n = take(">h")
        if n < 0:
            return None
        text = data[pos:pos + n].decode()
        pos += n
        return text

    if take(">i") != correlation_id:
        raise ValueError("correlation id mismatch")
    take(">i")  # throttle_time_ms
    brokers = []
    for _ in range(take(">i")):
        node_id = take(">i")
        host = string() or ""
        port = take(">i")
        string()  # rack
        brokers.append((node_id, host, port))
    cluster_id = string()
    controller_id = take(">i")
    if not brokers:
        return None
    return ClusterInfo(cluster_id, controller_id, brokers)


# --------------------------------------------------------------------------------------
# Processes and files
# --------------------------------------------------------------------------------------


def _cmdline(pid: int) -> str | None:
    """The command line of ``pid`` (None if it does not exist or is a zombie)."""
    proc = Path(f"/proc/{pid}")
    if proc.exists():
        try:
            stat = (proc / "stat").read_text()
            # Field 3 (after the parenthesised comm) is the state; Z = zombie = gone.
            if stat.rsplit(")", 1)[1].split()[0] == "Z":
                return None
            return (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError):
            return None
    if sys.platform.startswith("linux"):
        return None
    # macOS and friends: no /proc.
    out = subprocess.run(["ps", "-p", str(pid), "-o", "stat=,command="],
                         capture_output=True, text=True)
    line = out.stdout.strip()
    if out.returncode != 0 or not line or line.startswith("Z"):
        return None
    return line.split(None, 1)[1] if " " in line else ""


def _is_our_broker(pid: int, cfg: BrokerConfig) -> bool:
    cmd = _cmdline(pid)
    return cmd is not None and MAIN_CLASS in cmd and str(cfg.properties_path) in cmd


def _reap(pid: int) -> None:
    # If the broker is our own child (start() in this process), collect it so it
    # does not linger as a zombie; harmless when it is not our child.
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def running_pid(cfg: BrokerConfig, echo: Echo | None = None) -> int | None:
    """The pid of this instance's broker, or None. Removes a stale pid file."""
    try:
        text = cfg.pid_path.read_text().strip()
    except FileNotFoundError:
        return None
    try:
        pid = int(text)
    except ValueError:
        pid = -1
    if pid > 0:
        _reap(pid)
        if _is_our_broker(pid, cfg):
            return pid
    if echo:
        echo(f"removing stale pid file {cfg.pid_path} (pid {text!r} is not this broker)")
    cfg.pid_path.unlink(missing_ok=True)
    return None


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def tail_lines(path: Path, n: int = 40) -> list[str]:
    """The last ``n`` lines of a text file ([] if it does not exist)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 256 * 1024))
            data = fh.read()
    except FileNotFoundError:
        return []
    return data.decode(errors="replace").splitlines()[-n:] if n > 0 else []


def _log_excerpt(cfg: BrokerConfig, n: int = 30) -> str:
    parts = []
    for path in (cfg.stdout_log, cfg.server_log):
        lines = tail_lines(path, n)
        if lines:
            parts.append(f"--- last {len(lines)} lines of {path} ---\n" + "\n".join(lines))
    return "\n".join(parts) if parts else "(the broker wrote no log output)"


def _port_free(host: str, port: int) -> bool:
    # Bind the way the JVM will (SO_REUSEADDR, so TIME_WAIT leftovers of a
    # previous broker do not count as "taken").
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _cluster_id_on_disk(cfg: BrokerConfig) -> str | None:
    try:
        for line in (cfg.data_dir / "meta.properties").read_text().splitlines():
            if line.startswith("cluster.id="):
                return line.split("=", 1)[1].strip()
    except FileNotFoundError:
        pass
    return None


def _java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").exists():
        return str(Path(java_home) / "bin" / "java")
    found = shutil.which("java")
    if not found:
        raise JavaNotFoundError(
            "`java` not found: the local Kafka broker needs a Java 17+ runtime. Install one "
            "(e.g. `apt-get install openjdk-17-jre-headless`) or set JAVA_HOME."
        )
    return found


# --------------------------------------------------------------------------------------
# Jars, config, storage
# --------------------------------------------------------------------------------------


def jars_present(cfg: BrokerConfig) -> bool:
    """True when the jar cache is complete (written by :func:`ensure_jars`)."""
    return (cfg.jars_dir / JARS_STAMP).exists()


def ensure_jars(cfg: BrokerConfig, echo: Echo = print) -> Path:
    """Make sure the Kafka jars are in the cache; run Maven only if they are not.

    Raises :class:`MavenNotFoundError` if Maven is needed but missing, and
    :class:`BrokerError` with Maven's output if the resolution fails.
    """
    if jars_present(cfg):
        return cfg.jars_dir
    parent = cfg.jars_dir.parent
    parent.mkdir(parents=True, exist_ok=True)
    # A lock beside the cache: two first-time starts (e.g. two broker dirs) share it.
    with _locked(parent / f".{cfg.jars_dir.name}.lock"):
        if jars_present(cfg):
            return cfg.jars_dir
        mvn = shutil.which("mvn")
        if not mvn:
            raise MavenNotFoundError(
                f"the Kafka {cfg.kafka_version} jars are not in {cfg.jars_dir} and `mvn` is not "
                "installed to fetch them. Install Maven 3.6+ (e.g. `apt-get install maven`); "
                "it is needed only for this first download."
            )
        if not POM_PATH.exists():
            raise BrokerError(f"{POM_PATH} is missing: cannot resolve the Kafka jars "
                              "(the installed package is incomplete; reinstall loyalty-scorer)")
        tmp = parent / f".{cfg.jars_dir.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        # Maven runs on a copy: it may write beside its pom, and the installed
        # package (site-packages) can be read-only.
        pom_dir = parent / f".{cfg.jars_dir.name}.pom-{os.getpid()}"
        shutil.rmtree(pom_dir, ignore_errors=True)
        pom_dir.mkdir()
        pom = pom_dir / "pom.xml"
        shutil.copyfile(POM_PATH, pom)
        echo(f"resolving Apache Kafka {cfg.kafka_version} jars with Maven into {cfg.jars_dir} "
             "(first run only) ...")
        cmd = [mvn, "-q", "-B", "-f", str(pom), "dependency:copy-dependencies",
               f"-DoutputDirectory={tmp}", "-DincludeScope=runtime",
               f"-Dkafka.version={cfg.kafka_version}"]
        try:
            result = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
            if result.returncode != 0 or not any(tmp.glob("kafka_*.jar")):
                output = (result.stdout + result.stderr).strip().splitlines()[-40:]
                raise BrokerError(
                    f"Maven could not resolve Kafka {cfg.kafka_version} (exit "
                    f"{result.returncode}). Command: {' '.join(cmd)}\n" + "\n".join(output)
                )
            (tmp / JARS_STAMP).write_text(f"kafka {cfg.kafka_version}\n")
            shutil.rmtree(cfg.jars_dir, ignore_errors=True)  # an old incomplete cache
            tmp.rename(cfg.jars_dir)
        except subprocess.TimeoutExpired:
            raise BrokerError("Maven did not finish within 30 minutes") from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.rmtree(pom_dir, ignore_errors=True)
    return cfg.jars_dir


def server_properties(cfg: BrokerConfig) -> str:
    """The broker configuration for this instance (KRaft, combined broker+controller)."""
    props = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@{cfg.host}:{cfg.controller_port}",
        "listeners": f"PLAINTEXT://{cfg.host}:{cfg.port},CONTROLLER://{cfg.host}:{cfg.controller_port}",
        "advertised.listeners": f"PLAINTEXT://{cfg.host}:{cfg.port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": str(cfg.data_dir),
        "num.partitions": str(cfg.partitions),
        # A single node cannot replicate; the defaults (3) would make the
        # offsets/transactions topics impossible to create.
        "offsets.topic.replication.factor": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        # 50 partitions each (the defaults) make the first consumer group and
        # the first transaction noticeably slow on a 2-core machine.
        "offsets.topic.num.partitions": "8",
        "transaction.state.log.num.partitions": "8",
        # No 3 s wait before the first rebalance: tests and the demo join fresh groups.
        "group.initial.rebalance.delay.ms": "0",
        # Topics are created explicitly (registry / Faust admin); a typo must fail loudly.
        "auto.create.topics.enable": "false",
        "log.retention.hours": "168",
    }
    header = "# Generated by `loyalty broker start` on every start; edits are overwritten.\n"
    return header + "".join(f"{k}={v}\n" for k, v in props.items())


def log4j_properties(cfg: BrokerConfig) -> str:
    """reload4j configuration: everything into ``logs/server.log``, rolled to bound disk use."""
    return f"""# Generated by `loyalty broker start`.
log4j.rootLogger=INFO, file
log4j.appender.file=org.apache.log4j.RollingFileAppender
log4j.appender.file.File={cfg.server_log}
log4j.appender.file.MaxFileSize=10MB
log4j.appender.file.MaxBackupIndex=3
log4j.appender.file.layout=org.apache.log4j.PatternLayout
log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n
# Per-request and state-change chatter is useless for development.
log4j.logger.kafka.request.logger=WARN
log4j.logger.state.change.logger=WARN
log4j.logger.kafka.log.LogCleaner=WARN
"""


def _new_cluster_id() -> str:
    # Same format as `kafka-storage random-uuid`: url-safe base64 of 16 random
    # bytes without padding; Kafka rejects ids starting with '-' on the CLI.
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


def _java_base(cfg: BrokerConfig, java: str) -> list[str]:
    return [java, f"-Dlog4j.configuration=file:{cfg.log4j_path}", "-cp", f"{cfg.jars_dir}/*"]


def _format_storage(cfg: BrokerConfig, java: str, echo: Echo) -> None:
    if (cfg.data_dir / "meta.properties").exists():
        return
    cluster_id = _new_cluster_id()
    echo(f"formatting KRaft storage in {cfg.data_dir} (cluster id {cluster_id})")
    result = subprocess.run(
        [*_java_base(cfg, java), "kafka.tools.StorageTool", "format",
         "-t", cluster_id, "-c", str(cfg.properties_path)],
        capture_output=True, text=True, timeout=120,
    )
    if result.returncode != 0:
        raise BrokerError("formatting the KRaft storage failed:\n"
                          + (result.stdout + result.stderr).strip())


# --------------------------------------------------------------------------------------
# Public operations
# --------------------------------------------------------------------------------------


def status(cfg: BrokerConfig) -> BrokerStatus:
    """Current state of the instance; removes a stale pid file. Never raises."""
    pid = running_pid(cfg)
    cluster = probe_metadata(cfg.host, cfg.port)
    ours = cluster is not None and cluster.cluster_id == _cluster_id_on_disk(cfg)
    return BrokerStatus(pid, cluster, ours)


def _wait_ready(cfg: BrokerConfig, deadline: float,
                proc: subprocess.Popen[bytes] | None, pid: int) -> ClusterInfo:
    expected = _cluster_id_on_disk(cfg)
    while True:
        if proc is not None and proc.poll() is not None:
            raise BrokerStartError(
                f"the broker exited with code {proc.returncode} during startup\n"
                + _log_excerpt(cfg))
        if proc is None and not _is_our_broker(pid, cfg):
            raise BrokerStartError(f"broker pid {pid} exited during startup\n" + _log_excerpt(cfg))
        info = probe_metadata(cfg.host, cfg.port, timeout=1.0)
        if info is not None:
            if expected and info.cluster_id != expected:
                raise PortInUseError(
                    f"another Kafka cluster ({info.cluster_id}) answers on {cfg.bootstrap}, "
                    f"not the one in {cfg.data_dir}")
            return info
        if time.monotonic() >= deadline:
            raise BrokerStartError(
                f"the broker did not answer a metadata request on {cfg.bootstrap} within "
                f"{cfg.start_timeout_s:g}s\n" + _log_excerpt(cfg))
        time.sleep(0.2)


@dataclass(frozen=True)
class StartResult:
    """Outcome of :func:`start`."""

    pid: int
    already_running: bool
    seconds: float


def start(cfg: BrokerConfig, echo: Echo = print) -> StartResult:
    """Start the broker (no-op if this instance already runs); wait until it serves.

    Raises :class:`JavaNotFoundError`, :class:`MavenNotFoundError` (only if the
    jars are missing), :class:`PortInUseError`, :class:`BrokerStartError`
    (early exit or timeout; the process is killed first) or :class:`BrokerError`.
    """
    t0 = time.monotonic()
    cfg.dir.mkdir(parents=True, exist_ok=True)
    with _locked(cfg.lock_path):
        pid = running_pid(cfg, echo)
        if pid is not None:
            # Ours and alive: it may still be starting (e.g. an interrupted start).
            _wait_ready(cfg, time.monotonic() + cfg.start_timeout_s, None, pid)
            return StartResult(pid, True, time.monotonic() - t0)

        java = _java()
        for port in (cfg.port, cfg.controller_port):
            if not _port_free(cfg.host, port):
                other = probe_metadata(cfg.host, port)
                what = (f"another Kafka broker (cluster {other.cluster_id})" if other
                        else "another process")
                raise PortInUseError(
                    f"port {port} on {cfg.host} is already in use by {what}, not by a broker "
                    f"started from {cfg.dir}. Stop it (find it with `ss -ltnp 'sport = :{port}'`) "
                    f"or choose another port with --port / LOYALTY_BROKER (the controller uses "
                    f"port+1).")
        ensure_jars(cfg, echo)

        cfg.logs_dir.mkdir(parents=True, exist_ok=True)
        cfg.properties_path.write_text(server_properties(cfg))
        cfg.log4j_path.write_text(log4j_properties(cfg))
        _format_storage(cfg, java, echo)

        cmd = [java, f"-Xms{cfg.heap}", f"-Xmx{cfg.heap}", "-XX:+ExitOnOutOfMemoryError",
               "-Djava.awt.headless=true", *_java_base(cfg, java)[1:],
               MAIN_CLASS, str(cfg.properties_path)]
        with open(cfg.stdout_log, "ab") as out:
            out.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} starting: "
                      f"{' '.join(cmd)}\n".encode())
            out.flush()
            # A new session: Ctrl-C in the terminal (or make) must not reach the
            # broker, which outlives this command by design.
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, cwd=cfg.dir,
                                    start_new_session=True)
        cfg.pid_path.write_text(f"{proc.pid}\n")
        try:
            _wait_ready(cfg, time.monotonic() + cfg.start_timeout_s, proc, proc.pid)
        except BaseException:
            # Timeout, early exit, Ctrl-C: never leave a half-started broker behind.
            _terminate(proc.pid, grace_s=10.0)
            with contextlib.suppress(Exception):
                proc.wait(timeout=5)
            cfg.pid_path.unlink(missing_ok=True)
            raise
        return StartResult(proc.pid, False, time.monotonic() - t0)


def _alive(pid: int) -> bool:
    _reap(pid)
    return _cmdline(pid) is not None


def _terminate(pid: int, grace_s: float) -> bool:
    """SIGTERM, wait up to ``grace_s``, then SIGKILL. True if it had to be killed."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if not _alive(pid):
            return False
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return True


def stop(cfg: BrokerConfig, grace_s: float = 30.0, echo: Echo = print) -> int | None:
    """Stop this instance's broker; return the pid stopped, or None if none ran.

    Sends SIGTERM (Kafka shuts down cleanly, flushing logs), waits ``grace_s``,
    then SIGKILL. Only the verified pid from the pid file is signalled.
    """
    if not cfg.dir.exists():
        return None
    with _locked(cfg.lock_path):
        pid = running_pid(cfg, echo)
        if pid is None:
            return None
        if _terminate(pid, grace_s):
            echo(f"broker pid {pid} ignored SIGTERM for {grace_s:.0f}s and was killed")
        cfg.pid_path.unlink(missing_ok=True)
        return pid


def follow(path: Path, echo: Echo = print, poll_s: float = 0.5) -> None:
    """Print lines appended to ``path`` (from its current end) until interrupted.

    Survives log rotation: when the file is replaced or truncated it is reopened
    from the start.
    """
    fh = None
    inode = None
    first = True
    try:
        while True:
            try:
                st = path.stat()
            except FileNotFoundError:
                st = None
            if st is not None and (fh is None or st.st_ino != inode or st.st_size < fh.tell()):
                if fh is not None:
                    fh.close()
                fh = open(path, errors="replace")  # noqa: SIM115 - reopened on rotation
                if first:
                    fh.seek(0, os.SEEK_END)  # the caller already printed the tail
                inode = st.st_ino
            first = False
            if fh is not None:
                for line in fh.readlines():
                    echo(line.rstrip("\n"))
            time.sleep(poll_s)
    finally:
        if fh is not None:
            fh.close()
