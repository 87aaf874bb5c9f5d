from __future__ import annotations

import re
from pathlib import Path

import pytest

from monitor.config import env_overrides, load_settings
from monitor.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "plantwatch.yaml"
    path.write_text(text)
    return path


def test_file_defaults_and_env_precedence(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
model: {path: /models/pumps}
input: {topics: [a, b], group_id: g1}
detector: {k: 2, n: 4}
delivery:
  webhooks:
    - {name: ops, url: "http://127.0.0.1:9000/hook", secret: s3cret}
""",
    )
    env = {
        "PLANTWATCH_INPUT__GROUP_ID": "g2",
        "PLANTWATCH_DETECTOR__K": "3",
        "KAFKA_BOOTSTRAP_SERVERS": "10.0.0.1:9092",
        "UNRELATED": "x",
    }
    s = load_settings(path, env)
    assert s.input.topics == ("a", "b")
    assert s.input.group_id == "g2"
    assert s.detector.k == 3
    assert s.kafka.bootstrap_servers == "10.0.0.1:9092"
    assert s.model.path == Path("/models/pumps")
    assert s.windows.stride == 1
    hook = s.delivery.webhooks[0]
    assert hook.secret is not None
    assert hook.secret.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(s)
    with pytest.raises(ValueError, match="frozen"):
        s.input.group_id = "other"  # type: ignore[misc]


def test_plantwatch_variable_beats_plain_kafka_variable(tmp_path: Path) -> None:
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": "a:1",
        "PLANTWATCH_KAFKA__BOOTSTRAP_SERVERS": "b:2",
        "PLANTWATCH_MODEL__PATH": "/m",
    }
    assert load_settings(None, env).kafka.bootstrap_servers == "b:2"


def test_env_json_values() -> None:
    assert env_overrides({"PLANTWATCH_INPUT__TOPICS": '["x","y"]'}) == {
        "input": {"topics": ["x", "y"]}
    }
    with pytest.raises(ConfigError, match="PLANTWATCH_INPUT__TOPICS: not valid JSON"):
        env_overrides({"PLANTWATCH_INPUT__TOPICS": "[x"})


def test_env_empty_value_is_an_empty_string_not_json() -> None:
    # An empty variable (e.g. a blanked-out compose entry) used to fail as "not valid JSON".
    assert env_overrides({"PLANTWATCH_KAFKA__SASL_USERNAME": ""}) == {
        "kafka": {"sasl_username": ""}
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("model: {path: /m}\ndetector: {k: 6, n: 5}", r"detector: Value error, k \(6\) must not"),
        ("model: {path: /m}\ndetector: {k: 0}", r"detector\.k: Input should be greater"),
        ("model: {path: /m}\nwindows: {overflow: drop}", r"windows\.overflow: Input should be"),
        ("model: {path: /m}\nbogus: 1", r"bogus: Extra inputs are not permitted"),
        ("input: {topics: [a]}", r"model: Field required"),
        ("model: {path: /m}\nkafka: {security_protocol: SASL_SSL}", r"needs sasl_mechanism"),
        (
            "model: {path: /m}\ninput: {other_asset_patterns: [a*]}",
            r"input: .*other_asset_patterns needs asset_patterns",
        ),
        ("model: [unclosed", r"line 1: invalid YAML"),
        ("- a\n- b", "expected a mapping"),
    ],
)
def test_invalid_config_is_one_line_naming_the_setting(
    tmp_path: Path, text: str, message: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=message) as info:
        load_settings(path, {})
    assert "\n" not in str(info.value)
    assert str(info.value).startswith(str(path))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "nope.yaml", {})


def test_example_config_is_valid_and_shows_the_defaults() -> None:
    from monitor.config import Settings

    path = Path(__file__).parents[2] / "deploy" / "local" / "plantwatch.example.yaml"
    s = load_settings(path, {})
    defaults = Settings.model_validate({"model": {"path": str(s.model.path)}})
    assert s == defaults


def test_detector_rule_follows_the_window_length() -> None:
    from monitor.config import DetectorSettings

    assert DetectorSettings().resolved(32) == (40, 60, 60)
    assert DetectorSettings().resolved(8) == (12, 18, 18)
    k, n, _ = DetectorSettings().resolved(64)
    assert k > 64
    assert n >= k
    assert DetectorSettings(k=2, n=4, m=3).resolved(32) == (2, 4, 3)
    with pytest.raises(ConfigError, match=r"detector\.k \(40\) must not exceed"):
        DetectorSettings(n=10).resolved(32)


def test_secrets_can_come_from_files(tmp_path: Path) -> None:
    secret = tmp_path / "sasl-password"
    secret.write_text("from-a-file\n")
    env = {
        "PLANTWATCH_MODEL__PATH": "/m",
        "PLANTWATCH_KAFKA__SECURITY_PROTOCOL": "SASL_SSL",
        "PLANTWATCH_KAFKA__SASL_MECHANISM": "PLAIN",
        "PLANTWATCH_KAFKA__SASL_USERNAME": "pw",
        "PLANTWATCH_KAFKA__SASL_PASSWORD_FILE": str(secret),
    }
    s = load_settings(None, env)
    assert s.kafka.sasl_password is not None
    assert s.kafka.sasl_password.get_secret_value() == "from-a-file"
    env["PLANTWATCH_KAFKA__SASL_PASSWORD_FILE"] = str(tmp_path / "missing")
    with pytest.raises(ConfigError, match="PLANTWATCH_KAFKA__SASL_PASSWORD_FILE: cannot read"):
        load_settings(None, env)


WEBHOOK_TLS = """
model: {path: /m}
delivery:
  webhooks:
    - name: ops
      url: "https://hooks.example.org/plantwatch"
      tls: {ca_file: /etc/pw/ca.pem, client_cert: /etc/pw/client.pem, client_key: /etc/pw/c.key}
    - {name: plain, url: "http://127.0.0.1:9000/hook"}
"""


def test_webhook_tls_settings_and_password_from_a_file(tmp_path: Path) -> None:
    password = tmp_path / "key-pw"
    password.write_text("k3y-pass\n")
    env = {"PLANTWATCH_DELIVERY__WEBHOOKS__0__TLS__CLIENT_KEY_PASSWORD_FILE": str(password)}
    s = load_settings(write(tmp_path, WEBHOOK_TLS), env)
    ops, plain = s.delivery.webhooks
    assert ops.tls is not None
    assert ops.tls.ca_file == Path("/etc/pw/ca.pem")
    assert ops.tls.client_cert == Path("/etc/pw/client.pem")
    assert ops.tls.client_key == Path("/etc/pw/c.key")
    assert ops.tls.client_key_password is not None
    assert ops.tls.client_key_password.get_secret_value() == "k3y-pass"
    assert "k3y-pass" not in repr(s)
    # The override touched the first webhook only; the rest of the list is the file's.
    assert plain.tls is None
    assert plain.url == "http://127.0.0.1:9000/hook"
    # Without tls settings nothing changes.
    assert load_settings(write(tmp_path, WEBHOOK_TLS), {}).delivery.webhooks[0].tls is not None


@pytest.mark.parametrize(
    ("text", "env", "message"),
    [
        (
            WEBHOOK_TLS,
            {"PLANTWATCH_DELIVERY__WEBHOOKS__5__TLS__CLIENT_KEY": "/k"},
            r"webhooks\[5\]: the settings file lists 2 entries",
        ),
        (
            WEBHOOK_TLS,
            {"PLANTWATCH_DELIVERY__WEBHOOKS__1__TLS__CLIENT_CERT": "/c"},
            r"delivery\.webhooks\.1: Value error, webhook plain: tls settings need an https:// url",
        ),
        (
            WEBHOOK_TLS.replace("client_cert: /etc/pw/client.pem, ", ""),
            {},
            r"delivery\.webhooks\.0\.tls: Value error, client_key and client_key_password need",
        ),
    ],
)
def test_webhook_tls_errors_are_one_line(
    tmp_path: Path, text: str, env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        load_settings(write(tmp_path, text), env)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("routes", "message"),
    [
        ("[{name: c, asset_patterns: [c*], model: /c}, {name: c, asset_patterns: [d*], model: /d}]",
         "'c' is listed twice"),
        ("[{name: default, asset_patterns: [c*], model: /c}]", "names model.path's route"),
        ("[{name: c, asset_patterns: [], model: /c}]", "routes.0.asset_patterns"),
        ("[{name: c, asset_patterns: [c*]}]", "routes.0.model"),
        ("[{name: 'c d', asset_patterns: [c*], model: /c}]", "routes.0.name"),
    ],
)  # fmt: skip
def test_bad_routes_end_in_one_line_naming_them(tmp_path: Path, routes: str, message: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(f"model: {{path: /m}}\nroutes: {routes}\n")
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_settings(path, {})


def test_a_route_can_be_set_from_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("model: {path: /m}\nroutes: [{name: c, asset_patterns: [c*], model: /c}]\n")
    s = load_settings(path, {"PLANTWATCH_ROUTES__0__MODEL": "/bundles/c2"})
    assert [(r.name, r.asset_patterns, str(r.model)) for r in s.routes] == [
        ("c", ("c*",), "/bundles/c2")
    ]
    assert s.routes[0].detector is None  # the top-level detector section applies
