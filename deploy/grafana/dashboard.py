"""The plantwatch Grafana dashboard, generated: ``python deploy/grafana/dashboard.py``.

Writes ``deploy/grafana/dashboards/plantwatch.json`` (provisioned by file, see
``provisioning/dashboards/plantwatch.yml``). Plain JSON in Grafana's dashboard schema, standard
library only. :data:`PANELS` is also what the integration test evaluates against a real
Prometheus and what ``snapshot.py`` renders into ``dashboard.png``, so the picture in the README,
the dashboard and the test use the same PromQL.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
OUTPUT = HERE / "dashboards" / "plantwatch.json"
UID = "plantwatch"
DS = {"type": "prometheus", "uid": "${datasource}"}
SEL = 'job=~"$job"'
RI = "$__rate_interval"


@dataclass(frozen=True)
class Target:
    expr: str
    legend: str = ""
    instant: bool = False


@dataclass(frozen=True)
class Panel:
    title: str
    kind: str  # timeseries | stat | table | bars
    targets: tuple[Target, ...]
    unit: str = "short"
    w: int = 8
    h: int = 8
    description: str = ""
    options: dict[str, Any] = field(default_factory=dict)


def _q(quantile: float, metric: str, by: str = "") -> str:
    group = f"le{', ' + by if by else ''}"
    return (
        f"histogram_quantile({quantile}, sum by ({group}) (rate({metric}_bucket{{{SEL}}}[{RI}])))"
    )


#: Rows of panels, top to bottom.
ROWS: tuple[tuple[str, tuple[Panel, ...]], ...] = (
    (
        "Plant",
        (
            Panel(
                "Anomaly score vs threshold ($asset)",
                "timeseries",
                (
                    Target(f'plantwatch_anomaly_score{{{SEL}, asset=~"$asset"}}', "{{asset}}"),
                    Target(
                        f"max by (route) (plantwatch_anomaly_threshold{{{SEL}}})",
                        "threshold ({{route}})",
                    ),
                ),
                w=16,
                h=9,
                description="Latest window score per asset (first metrics.max_asset_labels "
                "assets) and the alert threshold of each route's model (one route, default, "
                "unless the service has routes).",
            ),
            Panel(
                "Open alerts",
                "stat",
                (Target(f"sum(plantwatch_open_alerts{{{SEL}}})", "open"),),
                w=4,
                h=9,
            ),
            Panel(
                "Worst assets (score / threshold)",
                "table",
                (
                    Target(
                        f"topk(10, plantwatch_anomaly_score{{{SEL}}} / on (job, instance, route) "
                        f"group_left () plantwatch_anomaly_threshold{{{SEL}}})",
                        "{{asset}}",
                        instant=True,
                    ),
                ),
                w=4,
                h=9,
            ),
            Panel(
                "Alert timeline (events by type and severity)",
                "bars",
                (
                    Target(
                        f"sum by (event, severity) "
                        f"(increase(plantwatch_alert_events_total{{{SEL}}}[{RI}]))",
                        "{{event}} {{severity}}",
                    ),
                    Target(f"sum(plantwatch_open_alerts{{{SEL}}})", "open alerts"),
                ),
                w=24,
                h=7,
            ),
        ),
    ),
    (
        "Throughput and data quality",
        (
            Panel(
                "Readings/s by result",
                "timeseries",
                (
                    Target(
                        f"sum by (result) (rate(plantwatch_readings_total{{{SEL}}}[{RI}]))",
                        "{{result}}",
                    ),
                    Target(f"sum(rate(plantwatch_windows_scored_total{{{SEL}}}[{RI}]))", "scored"),
                    Target(
                        f"sum(rate(plantwatch_windows_held_total{{{SEL}}}[{RI}]))",
                        "held (detector.hold)",
                    ),
                ),
                unit="reqps",
            ),
            Panel(
                "Dead letters/s by reason",
                "timeseries",
                (
                    Target(
                        f"sum by (reason) (rate(plantwatch_dead_letter_total{{{SEL}}}[{RI}]))",
                        "{{reason}}",
                    ),
                ),
                unit="reqps",
            ),
            Panel(
                "Consumer lag (records)",
                "timeseries",
                (
                    Target(
                        f"sum by (topic, partition) (plantwatch_consumer_lag_records{{{SEL}}})",
                        "{{topic}}[{{partition}}]",
                    ),
                ),
            ),
        ),
    ),
    (
        "Scoring",
        (
            Panel(
                "Scoring batch size (windows per call)",
                "timeseries",
                (
                    Target(_q(0.5, "plantwatch_scoring_batch_size"), "p50"),
                    Target(_q(0.99, "plantwatch_scoring_batch_size"), "p99"),
                    Target(
                        f"sum(rate(plantwatch_scoring_batch_size_sum{{{SEL}}}[{RI}])) / "
                        f"sum(rate(plantwatch_scoring_batch_size_count{{{SEL}}}[{RI}]))",
                        "mean",
                    ),
                ),
            ),
            Panel(
                "Scoring latency per call",
                "timeseries",
                (
                    Target(_q(0.5, "plantwatch_scoring_latency_seconds"), "p50"),
                    Target(_q(0.95, "plantwatch_scoring_latency_seconds"), "p95"),
                    Target(_q(0.99, "plantwatch_scoring_latency_seconds"), "p99"),
                ),
                unit="s",
            ),
            Panel(
                "End-to-end latency (reading timestamp to scored)",
                "timeseries",
                (
                    Target(_q(0.5, "plantwatch_end_to_end_latency_seconds"), "p50"),
                    Target(_q(0.95, "plantwatch_end_to_end_latency_seconds"), "p95"),
                    Target(_q(0.99, "plantwatch_end_to_end_latency_seconds"), "p99"),
                ),
                unit="s",
            ),
            Panel(
                "Time spent by stage",
                "bars",
                (
                    Target(
                        "sum by (stage) (rate(plantwatch_batch_stage_seconds_sum"
                        f'{{{SEL},stage!="score"}}[{RI}]))',
                        "{{stage}}",
                    ),
                ),
                w=24,
                unit="percentunit",
                description="Share of wall-clock time the consume loop spends in each stage: "
                "decode, windows, score_wait (waiting for the scoring thread, which scores "
                "one batch while the loop prepares the next), detect, commit (the Kafka "
                "transaction, one per input.commit_interval_ms of batches). Stacked, the total "
                "is how busy the loop is per instance summed over instances; near 100 % per "
                "instance it is the bottleneck, and a large score_wait means scoring is.",
            ),
        ),
    ),
    (
        "Delivery",
        (
            Panel(
                "Webhook deliveries/s by endpoint and result",
                "timeseries",
                (
                    Target(
                        f"sum by (endpoint, result) "
                        f"(rate(plantwatch_webhook_deliveries_total{{{SEL}}}[{RI}]))",
                        "{{endpoint}} {{result}}",
                    ),
                ),
                w=12,
                unit="reqps",
            ),
            Panel(
                "Webhook delivery latency p95",
                "timeseries",
                (
                    Target(
                        _q(0.95, "plantwatch_webhook_delivery_seconds", "endpoint"), "{{endpoint}}"
                    ),
                ),
                w=12,
                unit="s",
            ),
        ),
    ),
    (
        "Model and process",
        (
            Panel(
                "Model (name, version, provider)",
                "table",
                (
                    Target(
                        f"plantwatch_model_info{{{SEL}}}",
                        "{{instance}} {{name}} {{version}} {{provider}}",
                        instant=True,
                    ),
                ),
                w=8,
                description="CUDAExecutionProvider on GPU instances; CPUExecutionProvider "
                "otherwise (PlantwatchScoringOnCPU fires if a GPU instance falls back).",
            ),
            Panel(
                "Model reloads (1h)",
                "stat",
                (
                    Target(
                        f"sum by (result) (increase(plantwatch_model_reloads_total{{{SEL}}}[1h]))",
                        "{{result}}",
                    ),
                ),
                w=4,
            ),
            Panel(
                "Up / ready",
                "timeseries",
                (
                    Target(f"up{{{SEL}}}", "up {{instance}}"),
                    Target(f"plantwatch_ready{{{SEL}}}", "ready {{instance}}"),
                ),
                w=4,
            ),
            Panel(
                "Tracked assets",
                "timeseries",
                (
                    Target(f"sum(plantwatch_tracked_assets{{{SEL}}})", "tracked"),
                    Target(f"sum(plantwatch_asset_labels_dropped{{{SEL}}})", "without series"),
                ),
                w=8,
            ),
            Panel(
                "CPU (cores)",
                "timeseries",
                (Target(f"rate(process_cpu_seconds_total{{{SEL}}}[{RI}])", "{{instance}}"),),
            ),
            Panel(
                "Resident memory",
                "timeseries",
                (Target(f"process_resident_memory_bytes{{{SEL}}}", "{{instance}}"),),
                unit="bytes",
            ),
            Panel(
                "Data-quality events/s",
                "timeseries",
                (
                    Target(
                        f"sum by (kind) "
                        f"(rate(plantwatch_data_quality_events_total{{{SEL}}}[{RI}]))",
                        "{{kind}}",
                    ),
                    Target(f"sum(process_open_fds{{{SEL}}})", "open fds"),
                ),
            ),
        ),
    ),
)

PANELS: tuple[Panel, ...] = tuple(p for _, row in ROWS for p in row)
#: Marks on every time series panel where an alert opened.
#: Labelled counters appear at their first increment, so a new series counts as a change too.
_OPENED = f'plantwatch_alert_events_total{{{SEL}, event="opened"}}'
ANNOTATION_EXPR = f"(changes({_OPENED}[1m]) > 0) or ({_OPENED} unless {_OPENED} offset 1m)"


def expressions() -> list[str]:
    """Every PromQL expression of the dashboard, with its variables unresolved."""
    return [t.expr for p in PANELS for t in p.targets] + [ANNOTATION_EXPR]


def resolve(expr: str, *, job: str = "plantwatch", asset: str = ".+", rate: str = "1m") -> str:
    """``expr`` with Grafana's variables replaced, for evaluating it directly in Prometheus."""
    return expr.replace("$__rate_interval", rate).replace("$job", job).replace("$asset", asset)


def _panel_json(panel: Panel, pid: int, x: int, y: int) -> dict[str, Any]:
    kind = "timeseries" if panel.kind == "bars" else panel.kind
    defaults: dict[str, Any] = {"unit": panel.unit}
    if panel.kind == "bars":
        defaults["custom"] = {
            "drawStyle": "bars",
            "fillOpacity": 60,
            "stacking": {"mode": "normal"},
        }
    overrides: list[dict[str, Any]] = []
    if panel.title.startswith("Anomaly score"):
        overrides.append(
            {
                "matcher": {"id": "byName", "options": "threshold"},
                "properties": [
                    {"id": "color", "value": {"mode": "fixed", "fixedColor": "red"}},
                    {"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}},
                ],
            }
        )
    if panel.kind == "bars":
        overrides.append(
            {
                "matcher": {"id": "byName", "options": "open alerts"},
                "properties": [
                    {"id": "custom.drawStyle", "value": "line"},
                    {"id": "custom.stacking", "value": {"mode": "none"}},
                ],
            }
        )
    out: dict[str, Any] = {
        "id": pid,
        "type": kind,
        "title": panel.title,
        "datasource": DS,
        "gridPos": {"x": x, "y": y, "w": panel.w, "h": panel.h},
        "fieldConfig": {"defaults": defaults, "overrides": overrides},
        "targets": [
            {
                "refId": chr(ord("A") + i),
                "datasource": DS,
                "expr": t.expr,
                "legendFormat": t.legend or "__auto",
                "instant": t.instant,
                "range": not t.instant,
                **({"format": "table"} if panel.kind == "table" else {}),
            }
            for i, t in enumerate(panel.targets)
        ],
        "options": panel.options,
    }
    if panel.description:
        out["description"] = panel.description
    if panel.kind == "stat":
        out["options"] = {"reduceOptions": {"calcs": ["lastNotNull"]}, "colorMode": "value"}
        if panel.title == "Open alerts":
            defaults["thresholds"] = {
                "mode": "absolute",
                "steps": [{"color": "green", "value": None}, {"color": "red", "value": 1}],
            }
    if panel.kind == "table":
        out["transformations"] = [{"id": "labelsToFields", "options": {}}]
    return out


def dashboard() -> dict[str, Any]:
    panels: list[dict[str, Any]] = []
    pid, y = 1, 0
    for row_title, row in ROWS:
        panels.append(
            {
                "id": pid,
                "type": "row",
                "title": row_title,
                "collapsed": False,
                "gridPos": {"x": 0, "y": y, "w": 24, "h": 1},
                "panels": [],
            }
        )
        pid, y, x, row_h = pid + 1, y + 1, 0, 0
        for panel in row:
            if x + panel.w > 24:
                x, y, row_h = 0, y + row_h, 0
            panels.append(_panel_json(panel, pid, x, y))
            pid, x, row_h = pid + 1, x + panel.w, max(row_h, panel.h)
        y += row_h
    variables: list[dict[str, Any]] = [
        {
            "name": "datasource",
            "type": "datasource",
            "query": "prometheus",
            "label": "Data source",
            "current": {},
        },
        {
            "name": "job",
            "type": "query",
            "datasource": DS,
            "query": {"query": "label_values(plantwatch_ready, job)", "refId": "job"},
            "definition": "label_values(plantwatch_ready, job)",
            "includeAll": True,
            "multi": True,
            "current": {"text": "All", "value": "$__all"},
            "refresh": 2,
        },
        {
            "name": "asset",
            "type": "query",
            "datasource": DS,
            "query": {
                "query": 'label_values(plantwatch_anomaly_score{job=~"$job"}, asset)',
                "refId": "asset",
            },
            "definition": 'label_values(plantwatch_anomaly_score{job=~"$job"}, asset)',
            "includeAll": True,
            "multi": True,
            "current": {"text": "All", "value": "$__all"},
            "refresh": 2,
            "sort": 1,
        },
    ]
    for var in variables[1:]:
        var["allValue"] = ".+"
    return {
        "uid": UID,
        "title": "plantwatch",
        "description": "Streaming anomaly monitor: plant scores and alerts, throughput, data "
        "quality, scoring, delivery, model and process health. Generated by "
        "deploy/grafana/dashboard.py.",
        "tags": ["plantwatch"],
        "timezone": "utc",
        "editable": True,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {"list": variables},
        "annotations": {
            "list": [
                {
                    "name": "Alerts opened",
                    "datasource": DS,
                    "enable": True,
                    "iconColor": "red",
                    "expr": ANNOTATION_EXPR,
                    "titleFormat": "alert opened ({{severity}})",
                }
            ]
        },
        "panels": panels,
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2, sort_keys=False) + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if argv[1:2] == ["--check"]:
        if not OUTPUT.exists() or OUTPUT.read_text() != text:
            print(
                f"{OUTPUT} is out of date: run python deploy/grafana/dashboard.py", file=sys.stderr
            )
            return 1
        return 0
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(text)
    print(f"wrote {OUTPUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
