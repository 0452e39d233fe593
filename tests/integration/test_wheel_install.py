"""A non-editable install, as deploy/Dockerfile does it: build the wheel, install it, run it.

Catches files the commands need at run time but the wheel does not ship (the
Kafka pom once lived outside the package, so `loyalty broker start` failed
after `pip install .`). Offline and fast: the wheel is built without build
isolation, and the fresh venv gets the wheel only; its dependencies come from
this interpreter's site-packages through a path file (never this checkout, nor
the editable install's finder). The broker started here is private (own port
pair and directory, the shared jar cache) and always stopped.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from streams.ports import free_ports

REPO = Path(__file__).resolve().parents[2]


def dockerfile_sources() -> list[str]:
    """What deploy/Dockerfile copies into the image before `pip install .` (the COPY
    sources of its last stage; the earlier one builds the native engine's wheel)."""
    sources: list[str] = []
    for line in (REPO / "deploy" / "Dockerfile").read_text().splitlines():
        parts = line.split()
        if parts[:1] == ["FROM"]:
            sources = []
        if parts[:1] == ["COPY"] and not any(p.startswith("--from") for p in parts):
            sources.extend(parts[1:-1])
    return sources


# Build from exactly those files, so the test also fails if the image would miss one.
SOURCES = dockerfile_sources()


def _run(*cmd: str | Path, cwd: Path, env: dict[str, str] | None = None,
         timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, str]]]:
    """(bin directory of a fresh venv holding only the built wheel, environment to run it in)."""
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    src.mkdir()
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(REPO / name, src / name)
    built = _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                 "--no-index", "-q", "-w", root / "dist", src, cwd=root)
    assert built.returncode == 0, built.stdout + built.stderr
    wheel = next((root / "dist").glob("loyalty_scorer-*.whl"))

    venv = root / "venv"
    made = _run(getattr(sys, "_base_executable", sys.executable), "-m", "venv", "--without-pip",
                venv, cwd=root)
    assert made.returncode == 0, made.stderr
    bin_dir = venv / "bin"
    purelib = Path(_run(bin_dir / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])",
                        cwd=root).stdout.strip())
    done = _run(sys.executable, "-m", "pip", "--python", bin_dir / "python", "install", "--no-deps",
                "--no-index", "-q", wheel, cwd=root)
    assert done.returncode == 0, done.stdout + done.stderr
    # Dependencies: this interpreter's site-packages, appended after the venv's own.
    (purelib / "_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    yield bin_dir, env


def test_the_image_sources_are_what_the_package_needs() -> None:
    assert {"pyproject.toml", "schemas", "scoring", "streams"} <= set(SOURCES)


def test_the_wheel_runs_from_site_packages(installed: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    bin_dir, env = installed
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    proc = _run(bin_dir / "loyalty", "--version", cwd=tmp_path, env=env)
    assert (proc.returncode, proc.stdout.strip()) == (0, f"loyalty {version}"), proc.stderr
    where = _run(bin_dir / "python", "-c",
                 "import streams, streams.broker as b; print(streams.__file__); print(b.POM_PATH.is_file())",
                 cwd=tmp_path, env=env)
    module_file, pom_found = where.stdout.split()
    assert Path(module_file).is_relative_to(bin_dir.parent), module_file  # not this checkout
    assert pom_found == "True"


@pytest.mark.timeout(180)
def test_the_installed_broker_command_starts_and_stops(installed: tuple[Path, dict[str, str]],
                                                       tmp_path: Path) -> None:
    bin_dir, env = installed
    flags = ["--port", str(free_ports(2)), "--dir", str(tmp_path / "broker")]
    try:
        started = _run(bin_dir / "loyalty", "broker", "start", *flags, cwd=tmp_path, env=env)
        assert started.returncode == 0, started.stdout + started.stderr
        assert "broker up on" in started.stdout
    finally:
        stopped = _run(bin_dir / "loyalty", "broker", "stop", *flags, cwd=tmp_path, env=env)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert _run(bin_dir / "loyalty", "broker", "status", *flags, cwd=tmp_path, env=env).returncode == 3
