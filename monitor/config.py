"""Service configuration: a YAML file plus environment overrides, validated once at start.

Every setting can come from the environment as ``PLANTWATCH_<SECTION>__<FIELD>`` (for example
``PLANTWATCH_KAFKA__BOOTSTRAP_SERVERS``); ``KAFKA_BOOTSTRAP_SERVERS`` is honoured too. Precedence:
environment over file over defaults. An invalid value stops the service with one line naming it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from monitor.errors import ConfigError


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class KafkaSettings(_Section):
    """Connection and security settings, passed through to aiokafka."""

    bootstrap_servers: str = "127.0.0.1:9092"
    client_id: str = "plantwatch"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    ssl_password: SecretStr | None = None
    request_timeout_ms: int = Field(default=30_000, ge=1_000)
    #: The brokers' ``offset.metadata.max.bytes``: room for alert state in each commit.
    offset_metadata_max_bytes: int = Field(default=4096, ge=64)
    #: How long the brokers keep a transaction of a crashed instance open before aborting it
    #: (a restarted instance with the same ``instance_id`` aborts it at once), plus up to their
    #: ``transaction.abort.timed.out.transaction.cleanup.interval.ms``. Until then,
    #: ``read_committed`` readers of the alerts and scores topics wait at that transaction.
    #: Must exceed the time one batch takes to score and commit.
    transaction_timeout_ms: int = Field(default=60_000, ge=1_000, le=900_000)

    @model_validator(mode="after")
    def _sasl_complete(self) -> KafkaSettings:
        if self.security_protocol.startswith("SASL") and not (
            self.sasl_mechanism and self.sasl_username and self.sasl_password
        ):
            raise ValueError(
                f"security_protocol {self.security_protocol} needs sasl_mechanism, "
                "sasl_username and sasl_password"
            )
        return self


class InputSettings(_Section):
    topics: tuple[str, ...] = ("plantwatch.readings",)
    group_id: str = "plantwatch"
    format: Literal["auto", "json", "binary"] = "auto"
    #: fnmatch patterns of accepted asset ids; empty accepts any.
    asset_patterns: tuple[str, ...] = ()
    #: fnmatch patterns of assets other services own, where several share one readings topic,
    #: each with its own bundle for a group of assets (say pumps and compressors) and its own
    #: ``group_id``: their messages are counted and skipped, not dead-lettered (those keyed by
    #: such an asset before they are parsed: their own service checks them). An asset neither
    #: these nor ``asset_patterns`` match is still dead-lettered, so none goes unseen.
    other_asset_patterns: tuple[str, ...] = ()
    allow_extra_sensors: bool = False
    max_message_bytes: int = Field(default=1_048_576, ge=64)
    max_batch_readings: int = Field(default=10_000, ge=1)
    dead_letter_topic: str = "plantwatch.dead-letter"
    #: Records per ``getmany`` call and how long it waits for them.
    fetch_max_records: int = Field(default=5_000, ge=1)
    fetch_timeout_ms: int = Field(default=100, ge=1)
    #: How long the broker may hold a fetch request for partitions with no new records
    #: (Kafka's ``fetch.max.wait.ms``). The client has one fetch in flight per broker, and it
    #: leaves out partitions whose fetched records are still buffered: while a request for
    #: caught-up partitions waits, partitions that are behind wait with it. Kafka's default,
    #: 500 ms, stalled the benchmark's lagging partitions by 0.35 s once others were caught up.
    fetch_max_wait_ms: int = Field(default=100, ge=0, le=60_000)
    #: Batches handled within this interval are committed together (one Kafka transaction:
    #: alert events, dead letters, offsets); 0 commits every batch. As Kafka Streams'
    #: exactly-once ``commit.interval.ms`` (whose default is also 100 ms): fewer transactions
    #: cost less per reading, but alert events become visible to ``read_committed`` consumers
    #: up to this much later, and a crash re-reads up to this much more. What is open is
    #: committed before a rebalance or a stop moves the partitions.
    commit_interval_ms: int = Field(default=100, ge=0, le=60_000)

    @model_validator(mode="after")
    def _topics(self) -> InputSettings:
        if not self.topics:
            raise ValueError("at least one topic is needed")
        if self.other_asset_patterns and not self.asset_patterns:
            raise ValueError(
                "other_asset_patterns needs asset_patterns (without them no asset is another's)"
            )
        return self


class ModelSettings(_Section):
    #: A bundle directory. With ``reload: watch`` a new bundle written there is picked up.
    path: Path
    device: Literal["auto", "cpu", "cuda"] = "auto"
    #: Batches scored at once, each in its own thread. 0: one per CPU core on CPU (each
    #: single-threaded; the cores are the affinity capped by a cgroup CPU quota, e.g. a
    #: container's limits.cpu), one with CUDA.
    workers: int = Field(default=0, ge=0, description="batches scored at once (0: auto)")
    #: ONNX Runtime intra-op threads per batch. 0: the cores shared out among the workers
    #: (ONNX Runtime's default, all cores, for a single worker).
    threads: int = Field(default=0, ge=0, description="ONNX Runtime intra-op threads (0: auto)")
    #: IOBinding with fixed batch-size buckets: ``auto`` uses it with CUDA only.
    io_binding: Literal["auto", "on", "off"] = "auto"
    reload: Literal["watch", "sighup", "off"] = "watch"
    reload_poll_s: float = Field(default=2.0, gt=0)
    #: Ed25519 public keys (PEM files) whose signature (``manifest.sig``, made by
    #: ``plantwatch sign``) a bundle must carry to be loaded; several allow key rotation.
    #: Empty: bundles need no signature (the ONNX sha256 is checked either way).
    trusted_keys: tuple[Path, ...] = ()


class WindowSettings(_Section):
    stride: int = Field(default=1, ge=1, description="score every N-th reading of an asset")
    max_gap_steps: int = Field(default=3, ge=0)
    max_assets: int = Field(default=100_000, ge=1)
    overflow: Literal["reject", "evict_idle"] = "reject"
    #: An asset silent this long (event time, against its partition's other assets) no longer
    #: holds the partition's committed offset back, so restarts re-read a bounded stretch; once
    #: also silent for this long in processing time it is expired (memory and place freed).
    #: null: never (a quiet asset then pins the commit and its place until it is evicted).
    idle_timeout_s: float | None = Field(default=300.0, ge=0)


class HoldSettings(_Section):
    """State-based suppression: windows in which ``sensor`` is at or below ``running_above`` at
    some reading (the asset stopped, stopping or starting) open no alert, nor do those within
    ``seconds`` after the last of them (warm-up and cool-down). An open alert goes on."""

    #: A sensor of the bundle that says whether the asset runs (motor current, speed, flow).
    sensor: str = Field(min_length=1)
    #: The asset runs while ``sensor`` reads above this.
    running_above: float = Field(allow_inf_nan=False)
    seconds: float = Field(default=600.0, ge=0)


class DetectorSettings(_Section):
    """Alert rule. ``k``, ``n`` and ``m`` default to values derived from the window length ``L``
    (see :meth:`resolved`): a load step or a one-reading glitch lifts at most ``L`` consecutive
    windows, so requiring more than ``L`` anomalous windows keeps them from opening alerts."""

    k: int | None = Field(default=None, ge=1)
    n: int | None = Field(default=None, ge=1, le=1024)
    m: int | None = Field(default=None, ge=1)
    hysteresis: float = Field(default=0.8, gt=0, le=1)
    cooldown_s: float = Field(default=0.0, ge=0)
    update_factor: float = Field(default=1.25, gt=1)
    severity_bands: tuple[float, float] = (2.0, 4.0)
    top_k: int = Field(default=3, ge=1)
    #: Hold alerts while an asset stops, starts and settles (off when unset).
    hold: HoldSettings | None = None

    @model_validator(mode="after")
    def _k_of_n(self) -> DetectorSettings:
        if self.k is not None and self.n is not None and self.k > self.n:
            raise ValueError(f"k ({self.k}) must not exceed n ({self.n})")
        return self

    def resolved(self, window: int) -> tuple[int, int, int]:
        """``(k, n, m)``: explicit values, else ``k = L + max(4, L/4)``, ``n = m = 1.5 k``."""
        k = self.k if self.k is not None else window + max(4, window // 4)
        n = self.n if self.n is not None else max(k, min(1024, (3 * k + 1) // 2))
        m = self.m if self.m is not None else n
        if k > n:
            raise ConfigError(f"detector.k ({k}) must not exceed detector.n ({n})")
        return k, n, m


#: The route of ``model.path`` (the ``route`` label of its metrics).
DEFAULT_ROUTE = "default"


class RouteSettings(_Section):
    """A further bundle in the same service, for the assets ``asset_patterns`` match (say the
    compressors beside the pumps of ``model.path``): one read of the readings topic for every
    kind of machine, each scored by the bundle trained on its kind."""

    #: Names the route in logs, metrics (``route`` label) and the commit metadata.
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    #: fnmatch patterns of the route's assets. An asset goes to the first route whose patterns
    #: match it, in the order listed, else to ``model.path`` (if ``input.asset_patterns``
    #: allow it).
    asset_patterns: tuple[str, ...] = Field(min_length=1)
    #: The route's bundle directory (reloaded as ``model.reload`` says, like ``model.path``).
    model: Path
    #: The route's alert rule; default: the ``detector`` section.
    detector: DetectorSettings | None = None


class AlertSettings(_Section):
    topic: str = "plantwatch.alerts"


class ScoreSettings(_Section):
    #: Optional topic receiving every window score (one JSON message per asset and batch:
    #: ``{"asset", "ts": [...], "score": [...]}``), e.g. for a historian. Off when unset.
    topic: str | None = None


class WebhookTlsSettings(_Section):
    """TLS for one ``https://`` endpoint: whom to trust, and the client certificate to show
    (mutual TLS). Files are PEM; they are loaded once, when delivery starts."""

    #: CA certificates that sign the endpoint's server certificate (default: the system's).
    ca_file: Path | None = None
    #: Client certificate (chain); may also hold the private key.
    client_cert: Path | None = None
    #: Private key of ``client_cert`` when it is a separate file.
    client_key: Path | None = None
    #: Password of an encrypted private key.
    client_key_password: SecretStr | None = None

    @model_validator(mode="after")
    def _key_needs_cert(self) -> WebhookTlsSettings:
        if self.client_cert is None and (
            self.client_key is not None or self.client_key_password is not None
        ):
            raise ValueError("client_key and client_key_password need client_cert")
        return self


class WebhookSettings(_Section):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    url: str = Field(pattern=r"^https?://")
    format: Literal["json", "alertmanager"] = "json"
    secret: SecretStr | None = None
    timeout_s: float = Field(default=5.0, gt=0)
    headers: dict[str, SecretStr] = Field(default_factory=dict)
    tls: WebhookTlsSettings | None = None

    @model_validator(mode="after")
    def _tls_needs_https(self) -> WebhookSettings:
        if self.tls is not None and not self.url.startswith("https://"):
            raise ValueError(f"webhook {self.name}: tls settings need an https:// url")
        return self


class DeliverySettings(_Section):
    #: Run the webhook delivery consumer inside ``serve`` (else run ``plantwatch notify``).
    enabled: bool = True
    group_id: str = "plantwatch-notify"
    webhooks: tuple[WebhookSettings, ...] = ()
    max_attempts: int = Field(default=8, ge=1)
    initial_backoff_s: float = Field(default=0.5, gt=0)
    max_backoff_s: float = Field(default=30.0, gt=0)
    dead_letter_topic: str = "plantwatch.delivery-dead-letter"


class HttpSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=9308, ge=0, le=65535)


class MetricsSettings(_Section):
    #: Assets that get their own ``asset`` label on per-asset gauges; the rest are not exported
    #: per asset (bounded label cardinality).
    max_asset_labels: int = Field(default=1_000, ge=0)


class Settings(_Section):
    """All of ``plantwatch serve``'s settings."""

    kafka: KafkaSettings = KafkaSettings()
    input: InputSettings = InputSettings()
    model: ModelSettings
    windows: WindowSettings = WindowSettings()
    detector: DetectorSettings = DetectorSettings()
    #: Further bundles for groups of assets, read from the same topics (see RouteSettings).
    routes: tuple[RouteSettings, ...] = ()
    alerts: AlertSettings = AlertSettings()
    scores: ScoreSettings = ScoreSettings()
    delivery: DeliverySettings = DeliverySettings()
    http: HttpSettings = HttpSettings()
    metrics: MetricsSettings = MetricsSettings()
    shutdown_deadline_s: float = Field(default=30.0, gt=0)
    #: Stable name of this instance (default: host name); names its Kafka transactional id, so
    #: a restarted instance fences its predecessor. Unique per instance of a group.
    instance_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]{1,100}$")

    @model_validator(mode="after")
    def _route_names(self) -> Settings:
        names = [route.name for route in self.routes]
        for name in names:
            if name == DEFAULT_ROUTE:
                raise ValueError(f"routes: {DEFAULT_ROUTE!r} names model.path's route")
            if names.count(name) > 1:
                raise ValueError(f"routes: {name!r} is listed twice")
        return self


ENV_PREFIX = "PLANTWATCH_"


def env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """Nested settings from ``PLANTWATCH_SECTION__FIELD=value`` variables.

    Values that look like JSON lists or objects (``[...]``, ``{...}``) are parsed as JSON, so
    ``PLANTWATCH_INPUT__TOPICS='["a","b"]'`` works; everything else stays a string for the model
    to coerce. ``PLANTWATCH_<SECTION>__<FIELD>_FILE=/path`` reads the value from a file (the
    Docker/Kubernetes secrets convention; one trailing newline is dropped), so secrets need not
    sit in the environment. A numeric part indexes a list from the settings file:
    ``PLANTWATCH_DELIVERY__WEBHOOKS__0__TLS__CLIENT_KEY_PASSWORD_FILE=/run/secrets/key-pw``
    sets a field of the first webhook there.
    """
    out: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or name == "PLANTWATCH_CONFIG":
            continue
        if name.endswith("_FILE"):
            try:
                raw = Path(raw).read_text(encoding="utf-8").removesuffix("\n")
            except OSError as exc:
                raise ConfigError(
                    f"environment {name}: cannot read {raw} ({exc.strerror})"
                ) from None
            name = name.removesuffix("_FILE")
        path = name[len(ENV_PREFIX) :].lower().split("__")
        value: Any = raw
        if raw[:1] in ("[", "{"):  # not `in "[{"`: "" is in every string
            try:
                value = json.loads(raw)
            except json.JSONDecodeError:
                raise ConfigError(f"environment {name}: not valid JSON") from None
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"environment {name}: conflicts with another variable")
        node[path[-1]] = value
    if "KAFKA_BOOTSTRAP_SERVERS" in environ:
        out.setdefault("kafka", {}).setdefault(
            "bootstrap_servers", environ["KAFKA_BOOTSTRAP_SERVERS"]
        )
    return out


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        current = merged.get(key)
        if isinstance(value, Mapping) and isinstance(current, dict):
            merged[key] = _merge(current, value)
        elif (
            isinstance(value, Mapping)
            and isinstance(current, list)
            and value
            and all(str(k).isdigit() for k in value)
        ):
            merged[key] = _merge_list(key, current, value)
        else:
            merged[key] = value
    return merged


def _merge_list(name: str, base: list[Any], over: Mapping[str, Any]) -> list[Any]:
    """Environment overrides of single entries (``..._0__FIELD``) of a list from the file."""
    merged = list(base)
    for index, value in over.items():
        i = int(index)
        if i >= len(merged):
            raise ConfigError(
                f"environment override of {name}[{i}]: the settings file lists "
                f"{len(merged)} entries"
            )
        if isinstance(value, Mapping) and isinstance(merged[i], dict):
            merged[i] = _merge(merged[i], value)
        else:
            merged[i] = value
    return merged


def load_settings(path: Path | None, environ: Mapping[str, str] | None = None) -> Settings:
    """Read ``path`` (YAML) and the environment; raise :class:`ConfigError` in one line."""
    env = os.environ if environ is None else environ
    data: dict[str, Any] = {}
    where = str(path) if path else "configuration"
    if path is not None:
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = f" line {mark.line + 1}:" if mark else ""
            raise ConfigError(f"{path}:{line} invalid YAML") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of settings at the top level")
        data = loaded or {}
    data = _merge(data, env_overrides(env))
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "settings"
        raise ConfigError(f"{where}: {field}: {first['msg']}") from None
