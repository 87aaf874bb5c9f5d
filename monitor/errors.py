"""The project's exception hierarchy.

Every error plantwatch raises on purpose derives from :class:`PlantwatchError`. User mistakes
(bad file, column, config, bundle) carry a message that fits on one line and names the culprit;
the CLI prints that line instead of a traceback.
"""

from __future__ import annotations


class PlantwatchError(Exception):
    """Root of all plantwatch errors."""

    #: Whether retrying the same operation later may succeed.
    retriable: bool = False


class ConfigError(PlantwatchError):
    """Invalid configuration or command-line arguments."""


class DataError(PlantwatchError):
    """Unusable input data: a file, column or row that cannot be used."""


class BundleError(PlantwatchError):
    """A model bundle that is missing, malformed, tampered with or incompatible."""


class DependencyError(PlantwatchError):
    """An optional dependency needed for this command is not installed."""


class KafkaUnavailableError(PlantwatchError):
    """The Kafka cluster could not be reached."""

    retriable = True


class KafkaAuthError(PlantwatchError):
    """Kafka refused the client's credentials, or the TLS handshake failed: retrying the same
    settings will not help."""
