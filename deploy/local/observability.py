#!/usr/bin/env python3
"""Prometheus and Alertmanager on 127.0.0.1 for development and tests.

Usage: ``python3 deploy/local/observability.py {install,check,start,stop,status} [--home DIR]``.
Standard library only, like ``kafka.py``, so ``make test`` can run it before the virtualenv
exists. Both come from Debian's packages (``prometheus``, ``prometheus-alertmanager``; apt checks
their signatures); the packages' own services are never used: with no ``policy-rc.d`` in place,
``install`` adds one for the duration of ``apt-get`` so that nothing is started on 0.0.0.0, and
every process here runs with its own configuration and data directory, bound to 127.0.0.1.

``start`` runs a local pair scraping ``plantwatch serve`` on ``--target`` (default
``127.0.0.1:9308``) with the rules of ``deploy/prometheus/rules.yml``; tests load this file by
path and use :class:`LocalProcess`, :func:`prometheus_process` and :func:`alertmanager_process`
with their own configuration, directories and free ports.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("plantwatch.deploy.observability")

HOST = "127.0.0.1"
REPO = Path(__file__).resolve().parents[2]
DEFAULT_HOME = REPO / ".observability"
RULES = REPO / "deploy" / "prometheus" / "rules.yml"
PACKAGES = ("prometheus", "prometheus-alertmanager")
#: Binary name -> Debian package that ships it.
BINARIES = {
    "prometheus": "prometheus",
    "promtool": "prometheus",
    "prometheus-alertmanager": "prometheus-alertmanager",
    "amtool": "prometheus-alertmanager",
}
POLICY_RC_D = Path("/usr/sbin/policy-rc.d")
DEFAULT_PROMETHEUS_PORT = 9090
DEFAULT_ALERTMANAGER_PORT = 9093
START_TIMEOUT_S = 60.0


class ObservabilityError(Exception):
    """A failure with a message meant for the user (one line, optionally a log tail)."""


# --- installation ------------------------------------------------------------------------------


def find_binary(name: str) -> str | None:
    """Path of one of :data:`BINARIES` (``$PATH`` first, then ``/usr/bin``)."""
    return shutil.which(name) or (
        f"/usr/bin/{name}" if os.access(f"/usr/bin/{name}", os.X_OK) else None
    )


def missing_binaries() -> list[str]:
    return [name for name in BINARIES if find_binary(name) is None]


def require_binaries() -> dict[str, str]:
    """Every binary's path, or :class:`ObservabilityError` naming what is missing and the fix."""
    missing = missing_binaries()
    if missing:
        raise ObservabilityError(
            f"missing {', '.join(missing)}: run `python3 deploy/local/observability.py install` "
            f"(apt-get install {' '.join(sorted({BINARIES[m] for m in missing}))})"
        )
    return {name: str(find_binary(name)) for name in BINARIES}


def install() -> bool:
    """Install the Debian packages if a binary is missing; ``True`` if something was installed."""
    missing = missing_binaries()
    if not missing:
        return False
    packages = sorted({BINARIES[m] for m in missing})
    sudo: list[str] = [] if os.geteuid() == 0 else ["sudo"]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    added_policy = False
    try:
        if os.geteuid() == 0 and not POLICY_RC_D.exists():
            # Keep the packages' init scripts from starting daemons on every interface.
            POLICY_RC_D.write_text("#!/bin/sh\nexit 101\n")
            POLICY_RC_D.chmod(0o755)
            added_policy = True
        log.info("installing %s with apt-get", " ".join(packages))
        _run([*sudo, "apt-get", "update", "-qq"], env)
        _run([*sudo, "apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages], env)
    finally:
        if added_policy:
            POLICY_RC_D.unlink(missing_ok=True)
    still = missing_binaries()
    if still:
        raise ObservabilityError(f"apt-get installed {packages} but {still} are still missing")
    return True


def _run(argv: Sequence[str], env: dict[str, str]) -> None:
    try:
        done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        raise ObservabilityError(f"cannot run {argv[0]}: {exc.strerror}") from None
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-10:])
        raise ObservabilityError(f"{' '.join(argv)} failed (exit {done.returncode})\n{tail}")


def versions() -> dict[str, str]:
    """First line of each binary's ``--version``."""
    out: dict[str, str] = {}
    for name, path in require_binaries().items():
        done = subprocess.run([path, "--version"], capture_output=True, text=True, check=False)
        lines = (done.stdout + done.stderr).strip().splitlines()
        out[name] = lines[0] if lines else "?"
    return out


# --- processes ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def port_in_use(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex((HOST, port)) == 0


def http_get(url: str, timeout_s: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@dataclass
class LocalProcess:
    """One Prometheus or Alertmanager process on 127.0.0.1, with its own data directory.

    ``start()`` returns once ``/-/ready`` answers 200; ``stop()`` sends SIGTERM (then SIGKILL)
    and is idempotent. The pid is kept in ``<home>/<name>.pid`` so the CLI can stop it later.
    """

    name: str
    argv: list[str]
    home: Path
    port: int
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.home / f"{self.name}.log"

    @property
    def pid_path(self) -> Path:
        return self.home / f"{self.name}.pid"

    def start(self, timeout_s: float = START_TIMEOUT_S) -> None:
        if port_in_use(self.port):
            raise ObservabilityError(f"{self.name}: port {HOST}:{self.port} is already in use")
        self.home.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as out:
            self._proc = subprocess.Popen(
                self.argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.home,
                start_new_session=True,
            )
        self.pid_path.write_text(f"{self._proc.pid}\n")
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise ObservabilityError(
                    f"{self.name} exited with status {self._proc.returncode} during startup; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            with contextlib.suppress(OSError):
                if http_get(f"{self.url}/-/ready")[0] == 200:
                    log.info("%s ready on %s", self.name, self.url)
                    return
            time.sleep(0.2)
        self.stop()
        raise ObservabilityError(f"{self.name} not ready after {timeout_s:g}s:\n{self.log_tail()}")

    def stop(self, grace_s: float = 10.0) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.pid_path.unlink(missing_ok=True)

    def reload(self) -> None:
        """SIGHUP: re-read configuration and rules."""
        if self._proc is not None:
            self._proc.send_signal(signal.SIGHUP)

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> LocalProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def prometheus_process(
    config: Path, home: Path, port: int, *, retention: str = "2h", extra: Sequence[str] = ()
) -> LocalProcess:
    """Prometheus with ``config``, storing under ``home/prometheus-data``."""
    binary = require_binaries()["prometheus"]
    argv = [
        binary,
        f"--config.file={config}",
        f"--storage.tsdb.path={home / 'prometheus-data'}",
        f"--storage.tsdb.retention.time={retention}",
        f"--web.listen-address={HOST}:{port}",
        "--web.enable-lifecycle",
        *extra,
    ]
    return LocalProcess("prometheus", argv, home, port)


def alertmanager_process(
    config: Path, home: Path, port: int, *, extra: Sequence[str] = ()
) -> LocalProcess:
    """Alertmanager with ``config``; no clustering (``--cluster.listen-address=``)."""
    binary = require_binaries()["prometheus-alertmanager"]
    argv = [
        binary,
        f"--config.file={config}",
        f"--storage.path={home / 'alertmanager-data'}",
        f"--web.listen-address={HOST}:{port}",
        "--cluster.listen-address=",
        *extra,
    ]
    return LocalProcess("alertmanager", argv, home, port)


# --- the CLI's local pair ------------------------------------------------------------------------


def local_configs(
    home: Path, target: str, am_port: int, receiver_url: str | None
) -> tuple[Path, Path]:
    """Render a Prometheus and an Alertmanager configuration for a local serve at ``target``."""
    home.mkdir(parents=True, exist_ok=True)
    prom = home / "prometheus.yml"
    # JSON is YAML: no dependency on PyYAML here.
    prom.write_text(
        json.dumps(
            {
                "global": {"scrape_interval": "5s", "evaluation_interval": "5s"},
                "rule_files": [str(RULES)],
                "alerting": {
                    "alertmanagers": [{"static_configs": [{"targets": [f"{HOST}:{am_port}"]}]}]
                },
                "scrape_configs": [
                    {"job_name": "plantwatch", "static_configs": [{"targets": [target]}]}
                ],
            },
            indent=2,
        )
    )
    am = home / "alertmanager.yml"
    receiver: dict[str, object] = {"name": "default"}
    if receiver_url:
        receiver["webhook_configs"] = [{"url": receiver_url, "send_resolved": True}]
    am.write_text(
        json.dumps(
            {
                "route": {
                    "receiver": "default",
                    "group_by": ["alertname", "asset"],
                    "group_wait": "5s",
                    "group_interval": "1m",
                    "repeat_interval": "4h",
                },
                "receivers": [receiver],
            },
            indent=2,
        )
    )
    return prom, am


def _stop_by_pidfile(home: Path, name: str) -> bool:
    path = home / f"{name}.pid"
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        path.unlink(missing_ok=True)
        return False
    # Only ever signal a process that is ours: the right binary with our data directory.
    if not any(str(home).encode() in part for part in cmdline):
        path.unlink(missing_ok=True)
        return False
    os.kill(pid, signal.SIGTERM)
    for _ in range(100):
        if not Path(f"/proc/{pid}").exists():
            break
        time.sleep(0.1)
    path.unlink(missing_ok=True)
    return True


def _running(home: Path, name: str) -> int | None:
    try:
        pid = int((home / f"{name}.pid").read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if Path(f"/proc/{pid}").exists() else None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="observability.py", description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=DEFAULT_HOME, help="config, data and logs")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("install", help="apt-get install the packages if a binary is missing")
    sub.add_parser("check", help="print the versions; exit 1 if a binary is missing")
    start = sub.add_parser("start", help="start a local Prometheus + Alertmanager pair")
    start.add_argument("--target", default=f"{HOST}:9308", help="serve's /metrics host:port")
    start.add_argument("--prometheus-port", type=int, default=DEFAULT_PROMETHEUS_PORT)
    start.add_argument("--alertmanager-port", type=int, default=DEFAULT_ALERTMANAGER_PORT)
    start.add_argument("--receiver-url", help="webhook URL Alertmanager notifies")
    sub.add_parser("stop", help="stop the pair started with `start`")
    sub.add_parser("status", help="exit 0 when both run, 3 when not")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="observability.py: %(message)s")
    args = _parser().parse_args(argv)
    home: Path = args.home.resolve()
    try:
        if args.command == "install":
            if not install():
                print("prometheus and alertmanager already installed")
            return 0
        if args.command == "check":
            for name, version in versions().items():
                print(f"{name}: {version}")
            return 0
        if args.command == "start":
            prom_cfg, am_cfg = local_configs(
                home, args.target, args.alertmanager_port, args.receiver_url
            )
            for proc in (
                alertmanager_process(am_cfg, home, args.alertmanager_port),
                prometheus_process(prom_cfg, home, args.prometheus_port),
            ):
                if _running(home, proc.name):
                    print(f"{proc.name} already running")
                    continue
                proc.start()
                proc._proc = None  # detached: it outlives this script; `stop` finds the pid
                print(f"{proc.name} on {proc.url} (log {proc.log_path})")
            return 0
        if args.command == "stop":
            for name in ("prometheus", "alertmanager"):
                print(f"{name}: {'stopped' if _stop_by_pidfile(home, name) else 'not running'}")
            return 0
        if args.command == "status":
            states = {name: _running(home, name) for name in ("prometheus", "alertmanager")}
            for name, pid in states.items():
                print(f"{name}: {f'running (pid {pid})' if pid else 'not running'}")
            return 0 if all(states.values()) else 3
    except ObservabilityError as exc:
        print(f"observability.py: error: {exc}", file=sys.stderr)
        return 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
