from __future__ import annotations

import ssl

from monitor.config import KafkaSettings, load_settings
from monitor.kafka import client_kwargs


def test_plaintext_defaults() -> None:
    kwargs = client_kwargs(KafkaSettings())
    assert kwargs["security_protocol"] == "PLAINTEXT"
    assert "sasl_mechanism" not in kwargs
    assert "ssl_context" not in kwargs


def test_sasl_ssl_scram_passes_through_without_leaking_the_secret() -> None:
    env = {
        "PLANTWATCH_MODEL__PATH": "/m",
        "PLANTWATCH_KAFKA__SECURITY_PROTOCOL": "SASL_SSL",
        "PLANTWATCH_KAFKA__SASL_MECHANISM": "SCRAM-SHA-512",
        "PLANTWATCH_KAFKA__SASL_USERNAME": "plantwatch",
        "PLANTWATCH_KAFKA__SASL_PASSWORD": "hunter2-very-secret",
    }
    settings = load_settings(None, env)
    kwargs = client_kwargs(settings.kafka)
    assert kwargs["security_protocol"] == "SASL_SSL"
    assert kwargs["sasl_mechanism"] == "SCRAM-SHA-512"
    assert kwargs["sasl_plain_username"] == "plantwatch"
    assert kwargs["sasl_plain_password"] == "hunter2-very-secret"
    assert isinstance(kwargs["ssl_context"], ssl.SSLContext)
    for rendering in (repr(settings), str(settings), settings.model_dump_json()):
        assert "hunter2" not in rendering
