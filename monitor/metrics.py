"""Every Prometheus metric plantwatch exports, defined once against an injected registry.

Names carry units, counters end in ``_total`` and every label takes values from a bounded set:
enums, configured endpoint names, topic partitions, and at most ``max_asset_labels`` asset ids
(assets beyond that are left out of per-asset series and counted instead).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Metric,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from monitor.config import DEFAULT_ROUTE

PREFIX = "plantwatch"

#: Powers of two up to the largest ``getmany`` batch a service typically scores at once.
BATCH_BUCKETS = tuple(float(2**i) for i in range(15))
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
#: Fine around the tens of milliseconds a live stream takes, so that percentiles there are
#: read from bucket edges rather than interpolated across a wide bucket.
E2E_BUCKETS = (
    0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip


class Metrics:
    """The service's metrics. One instance per process (or per test, on a fresh registry)."""

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        max_asset_labels: int = 1_000,
        process: bool = True,
    ) -> None:
        self.registry = registry
        self.max_asset_labels = max_asset_labels
        #: Assets left out of the per-asset score series by the label cap.
        self._unlabelled_assets: set[str] = set()
        #: Per route, the labels of its model's plantwatch_model_info series.
        self._models: dict[str, tuple[str, str, str, str, str]] = {}
        p = PREFIX
        r = registry
        self.readings = Counter(
            f"{p}_readings_total",
            "Readings consumed, by result (ok, invalid, late, duplicate, asset_limit; other_asset: "
            "messages of other services' assets, skipped: input.other_asset_patterns).",
            ["result"],
            registry=r,
        )
        self.messages = Counter(
            f"{p}_messages_total",
            "Kafka messages consumed and committed (fully handled), by topic.",
            ["topic"],
            registry=r,
        )
        self.dead_letters = Counter(
            f"{p}_dead_letter_total",
            "Records sent to the dead-letter topic, by reason.",
            ["reason"],
            registry=r,
        )
        self.data_quality = Counter(
            f"{p}_data_quality_events_total",
            "Data-quality events: gaps carried forward, windows reset by long gaps.",
            ["kind"],
            registry=r,
        )
        self.batch_rewinds = Counter(
            f"{p}_batch_rewinds_total",
            "Batches whose transaction failed: aborted and consumed again from the last commit.",
            registry=r,
        )
        self.windows_scored = Counter(
            f"{p}_windows_scored_total", "Windows scored by the model.", registry=r
        )
        self.windows_held = Counter(
            f"{p}_windows_held_total",
            "Scored windows in which detector.hold's sensor showed the asset stopped, stopping "
            "or starting: they open no alert (nor do those in the hold time after them).",
            registry=r,
        )
        self.scoring_batch_size = Histogram(
            f"{p}_scoring_batch_size",
            "Windows per ONNX Runtime call.",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.scoring_latency = Histogram(
            f"{p}_scoring_latency_seconds",
            "Duration of one ONNX Runtime scoring call.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_stage = Histogram(
            f"{p}_batch_stage_seconds",
            "Time one batch spent in each stage of the data path (decode, windows, score, "
            "detect), and each commit (one Kafka transaction per input.commit_interval_ms "
            "of batches): where the time goes. score runs in the scoring thread, overlapping "
            "the next partition's decode and windows; score_wait is what the loop waited "
            "for it.",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.end_to_end_latency = Histogram(
            f"{p}_end_to_end_latency_seconds",
            "From a reading's timestamp to its window being scored.",
            buckets=E2E_BUCKETS,
            registry=r,
        )
        self.anomaly_score = _AssetScores(
            f"{p}_anomaly_score",
            "Latest window score per asset and its route (first max_asset_labels assets only).",
        )
        r.register(self.anomaly_score)
        self.asset_labels_dropped = Gauge(
            f"{p}_asset_labels_dropped",
            "Assets left out of per-asset series because of the label cap.",
            registry=r,
        )
        self.threshold = Gauge(
            f"{p}_anomaly_threshold",
            "Alert threshold of the model loaded per route (default: model.path's).",
            ["route"],
            registry=r,
        )
        self.tracked_assets = Gauge(
            f"{p}_tracked_assets", "Assets with a window in memory.", registry=r
        )
        self.open_alerts = Gauge(f"{p}_open_alerts", "Alerts currently open.", registry=r)
        self.alert_events = Counter(
            f"{p}_alert_events_total",
            "Alert events produced, by event type and severity.",
            ["event", "severity"],
            registry=r,
        )
        self.webhook_deliveries = Counter(
            f"{p}_webhook_deliveries_total",
            "Webhook delivery attempts, by endpoint and result.",
            ["endpoint", "result"],
            registry=r,
        )
        self.webhook_latency = Histogram(
            f"{p}_webhook_delivery_seconds",
            "Duration of one webhook delivery attempt.",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.consumer_lag = Gauge(
            f"{p}_consumer_lag_records",
            "Records between the consumer's position and the partition's end.",
            ["topic", "partition"],
            registry=r,
        )
        self.model_info = Gauge(
            f"{p}_model_info",
            "The model loaded per route (value 1) with its name, version, sha256 and execution "
            "provider.",
            ["route", "name", "version", "sha256", "provider"],
            registry=r,
        )
        self.model_reloads = Counter(
            f"{p}_model_reloads_total",
            "Model reload attempts, by result (ok, invalid).",
            ["result"],
            registry=r,
        )
        self.ready = Gauge(f"{p}_ready", "1 when /readyz reports ready.", registry=r)
        if process:
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)

    def set_asset_score(self, asset: str, score: float) -> None:
        """Update an asset's score gauge, within the label cap."""
        self.set_asset_scores({asset: score})

    def set_asset_scores(self, latest: dict[str, float], route: str = DEFAULT_ROUTE) -> None:
        """Update the score gauges of many assets of a route, within the label cap."""
        scores = self.anomaly_score.routes.setdefault(route, {})
        if latest.keys() <= scores.keys():  # the common case: a dict update, no Python loop
            scores.update(latest)
            return
        for asset, score in latest.items():
            if asset in scores or self._label(asset):
                scores[asset] = score

    def _label(self, asset: str) -> bool:
        """Whether a new asset gets a series (within the label cap)."""
        if asset in self._unlabelled_assets:
            return False
        if len(self.anomaly_score) >= self.max_asset_labels:
            self._unlabelled_assets.add(asset)
            self.asset_labels_dropped.set(len(self._unlabelled_assets))
            return False
        return True

    def forget_assets(self, assets: Iterable[str]) -> None:
        """Drop per-asset series of assets this instance no longer owns (after a rebalance)."""
        routes = self.anomaly_score.routes.values()
        for asset in assets:
            for scores in routes:
                scores.pop(asset, None)
            self._unlabelled_assets.discard(asset)
        self.asset_labels_dropped.set(len(self._unlabelled_assets))

    def set_model(
        self,
        name: str,
        version: str,
        sha256: str,
        provider: str,
        *,
        threshold: float,
        route: str = DEFAULT_ROUTE,
    ) -> None:
        """The model a route now scores with (replacing the route's last)."""
        old = self._models.pop(route, None)
        if old is not None:
            self.model_info.remove(*old)
        self._models[route] = (route, name, version, sha256, provider)
        self.model_info.labels(*self._models[route]).set(1)
        self.threshold.labels(route).set(threshold)


class _AssetScores(Collector):
    """The per-asset score gauge as a custom collector: updating a plain dict costs one C-level
    ``dict.update`` per scored batch, where a labelled :class:`Gauge` takes a lock and a call
    per asset (profiled: that was most of the detect stage at 1,000 assets). Scrapes read a
    snapshot (``list(dict.items())`` is atomic under the GIL)."""

    def __init__(self, name: str, documentation: str) -> None:
        self.name = name
        self.documentation = documentation
        #: Per route, per asset: the latest score.
        self.routes: dict[str, dict[str, float]] = {}

    def __len__(self) -> int:
        return sum(map(len, self.routes.values()))

    def describe(self) -> list[Metric]:
        return [GaugeMetricFamily(self.name, self.documentation, labels=["asset", "route"])]

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(self.name, self.documentation, labels=["asset", "route"])
        for route, scores in list(self.routes.items()):
            for asset, score in list(scores.items()):
                family.add_metric([asset, route], score)
        yield family
