"""The observability files against real parts: serve on the real local Kafka, fed a live simulated
plant; a real Prometheus (Debian's package) scraping it with ``deploy/prometheus/rules.yml``; a
real Alertmanager receiving plantwatch's alerts through the ``alertmanager`` webhook format and
routing them to an aiohttp receiver on 127.0.0.1.

Prometheus and Alertmanager come from ``deploy/local/observability.py install`` (run by
``make test``); if they are missing the tests fail with that instruction, never skip.
With ``PLANTWATCH_DASHBOARD_PNG=<file>`` the dashboard's panels are also rendered from the same
data into that file (``deploy/grafana/dashboard.png``).
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import aiohttp
import pandas as pd
import pytest
import yaml
from aiohttp import web
from aiokafka import AIOKafkaProducer

import monitor.notify
from monitor.records import encode_json_reading
from tests.harness import running, sample, settings_for, wait_for
from tests.plant import PLANT, PLANT_WINDOW
from training.simulator import PlantConfig, PlantSimulator

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "rules.yml"
NewTopic = Callable[..., Awaitable[str]]

#: Seconds of history produced at once (a full window per asset, so scoring starts at once),
#: then seconds produced in real time, one reading per asset and second.
BACKFILL_S = PLANT_WINDOW + 4
LIVE_S = int(os.environ.get("PLANTWATCH_OBS_LIVE_S", "40"))
FAULT_S = (3, 23)  # live seconds during which one asset's bearing fails
GAP_S = (20, 22)  # live seconds another asset misses
RATE = "10s"  # stands in for Grafana's $__rate_interval at a 1 s scrape interval


def _load(name: str, path: Path) -> ModuleType:
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


obs = _load("plantwatch_observability", ROOT / "deploy" / "local" / "observability.py")
dash = _load("plantwatch_dashboard", ROOT / "deploy" / "grafana" / "dashboard.py")


@pytest.fixture(scope="module")
def obs_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A quickly trained bundle of the test plant: enough to flag an obvious bearing failure.

    (The session's ``plant_bundle`` trains for minutes on a busy machine; this test is about the
    observability path, not detection quality.)
    """
    from training.fit import FitConfig
    from training.pipeline import TrainConfig, train_bundle
    from training.simulator import write

    root = tmp_path_factory.mktemp("obs")
    write(PlantConfig(**PLANT, duration_s=3600, n_faults=0, seed=11), root / "normal.parquet")
    config = TrainConfig(
        data=root / "normal.parquet",
        out=root / "bundle",
        family="dense",
        window=PLANT_WINDOW,
        fit=FitConfig(epochs=4, progress=False),
        name="obs-plant",
    )
    return train_bundle(config).bundle.path


@pytest.fixture(scope="module")
def binaries() -> dict[str, str]:
    try:
        found: dict[str, str] = obs.require_binaries()
    except obs.ObservabilityError as exc:
        pytest.fail(str(exc), pytrace=False)
    return found


def _run(argv: list[str]) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, check=False, cwd=ROOT)
    assert done.returncode == 0, f"{' '.join(argv)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_promtool_and_amtool_accept_the_files(binaries: dict[str, str]) -> None:
    _run([binaries["promtool"], "check", "config", "deploy/prometheus/prometheus.yml"])
    _run([binaries["promtool"], "check", "rules", str(RULES)])
    out = _run([binaries["promtool"], "test", "rules", "deploy/prometheus/rules_test.yml"])
    assert "SUCCESS" in out
    _run([binaries["amtool"], "check-config", "deploy/alertmanager/alertmanager.yml"])


# --- the live stack ----------------------------------------------------------------------------


class Receiver:
    """Alertmanager's webhook receiver: keeps every notification."""

    def __init__(self) -> None:
        self.notifications: list[dict[str, Any]] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.notifications.append(await request.json())
        return web.Response(status=200)

    def alerts(self) -> list[dict[str, Any]]:
        return [a for n in self.notifications for a in n["alerts"]]


async def _receiver(port: int, receiver: Receiver) -> AsyncIterator[None]:
    app = web.Application()
    app.router.add_post("/am", receiver.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield
    finally:
        await runner.cleanup()


def _frames(start_ms: int) -> pd.DataFrame:
    sim = PlantSimulator(
        PlantConfig(
            **PLANT,
            start=pd.Timestamp(start_ms, unit="ms", tz="UTC").to_pydatetime(),
            duration_s=BACKFILL_S + LIVE_S,
            n_faults=0,
            seed=41,
        )
    )
    frame = pd.concat(list(sim.chunks()), ignore_index=True)
    frame["ts_ms"] = frame["timestamp"].dt.as_unit("ms").astype("int64")
    return frame.sort_values(["ts_ms", "asset"], kind="stable").reset_index(drop=True)


async def _stream(bootstrap: str, topic: str, frame: pd.DataFrame, faulty: str, live0: int) -> int:
    """Produce the history at once, then each second's readings when their time comes; inject a
    bearing failure on ``faulty`` and two undecodable/invalid messages per live second."""
    from training.simulator import SENSORS

    gappy = sorted(set(frame["asset"]) - {faulty})[0]
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    messages = 0
    try:
        for ts_ms, rows in frame.groupby("ts_ms", sort=True):
            live_s = (int(ts_ms) - live0) / 1000
            if live_s >= 0:
                await asyncio.sleep(max(0.0, int(ts_ms) / 1000 - time.time()))
            for row in rows.itertuples(index=False):
                if row.asset == gappy and GAP_S[0] <= live_s < GAP_S[1]:
                    continue  # a short gap: carried forward (data-quality event)
                values = {s: float(getattr(row, s)) for s in SENSORS}
                if row.asset == faulty and FAULT_S[0] <= live_s < FAULT_S[1]:
                    values["vibration_rms"] *= 4.0
                    values["bearing_temp"] += 25.0
                body = encode_json_reading(row.asset, int(ts_ms), values)
                await producer.send(topic, body, key=row.asset.encode())
                messages += 1
            if live_s >= 0:
                await producer.send(topic, b"{not json", key=b"pump-01")
                bad = {"asset": "pump-01", "ts": int(ts_ms), "values": {"bogus": 1.0}}
                await producer.send(topic, json.dumps(bad).encode(), key=b"pump-01")
                messages += 2
        await producer.flush()
    finally:
        await producer.stop()
    return messages


class Prom:
    def __init__(self, http: aiohttp.ClientSession, url: str) -> None:
        self.http, self.url = http, url

    async def api(self, path: str, **params: str) -> Any:
        async with self.http.get(f"{self.url}/api/v1/{path}", params=params) as resp:
            doc = await resp.json()
        assert doc["status"] == "success", f"{path} {params}: {doc}"
        return doc["data"]

    async def instant(self, expr: str) -> list[dict[str, Any]]:
        data = await self.api("query", query=expr)
        return list(data["result"])

    async def range(self, expr: str, start: float, end: float) -> list[dict[str, Any]]:
        data = await self.api(
            "query_range", query=expr, start=f"{start:.3f}", end=f"{end:.3f}", step="1"
        )
        return list(data["result"])


def _has_number(result: list[dict[str, Any]]) -> bool:
    points = [v for item in result for v in item.get("values", [item.get("value")]) if v]
    return any(math.isfinite(float(v[1])) for v in points)


#: Rules the live run drives into pending or firing.
EXPECTED_ACTIVE = {
    "PlantwatchDown",  # the plantwatch-notify target points at a closed port
    "PlantwatchScoringOnCPU",  # serve is also scraped with accelerator="cuda"
    "PlantwatchDeadLetterSpike",  # two bad messages per live second
    "PlantwatchWebhookDeliveryFailing",  # the "broken" webhook's port is closed
    "PlantwatchWebhookEventsParked",
    "PlantwatchModelReloadRejected",  # the bundle is corrupted mid-run
}


async def test_dashboard_rules_and_alertmanager_against_a_live_serve(
    kafka_bootstrap: str,
    new_topic: NewTopic,
    obs_bundle: Path,
    binaries: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    t_start = time.monotonic()
    monkeypatch.setattr(monitor.notify, "ALERTMANAGER_RESEND_S", 2.0)
    bundle = tmp_path / "bundle"
    shutil.copytree(obs_bundle, bundle)
    readings = await new_topic(partitions=3)
    alerts, dlq, delivery_dlq = [await new_topic(partitions=1) for _ in range(3)]
    hook_port, am_port, prom_port, serve_port, dead_port = (obs.free_port() for _ in range(5))

    am_config = tmp_path / "alertmanager.yml"
    am_config.write_text(
        yaml.safe_dump(
            {
                "route": {
                    "receiver": "test",
                    "group_by": ["alertname", "asset", "alert_id"],
                    "group_wait": "1s",
                    "group_interval": "1s",
                    "repeat_interval": "1h",
                },
                "receivers": [
                    {
                        "name": "test",
                        "webhook_configs": [
                            {"url": f"http://127.0.0.1:{hook_port}/am", "send_resolved": True}
                        ],
                    }
                ],
            }
        )
    )
    target = f"127.0.0.1:{serve_port}"
    prom_config = tmp_path / "prometheus.yml"
    prom_config.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(RULES)],
                "scrape_configs": [
                    {"job_name": "plantwatch", "static_configs": [{"targets": [target]}]},
                    {
                        "job_name": "plantwatch-gpu",
                        "static_configs": [
                            {"targets": [target], "labels": {"accelerator": "cuda"}}
                        ],
                    },
                    {
                        "job_name": "plantwatch-notify",
                        "static_configs": [{"targets": [f"127.0.0.1:{dead_port}"]}],
                    },
                ],
            }
        )
    )
    _run([binaries["promtool"], "check", "config", str(prom_config)])
    settings = settings_for(
        kafka_bootstrap,
        bundle,
        readings=readings,
        alerts=alerts,
        dead_letter=dlq,
        model={"reload": "sighup"},
        detector={"k": 4, "n": 6, "m": 6},
        http={"host": "127.0.0.1", "port": serve_port},
        delivery={
            "enabled": True,
            "group_id": f"pw-obs-{uuid.uuid4().hex[:8]}",
            "dead_letter_topic": delivery_dlq,
            "max_attempts": 2,
            "initial_backoff_s": 0.05,
            "max_backoff_s": 0.1,
            "webhooks": [
                {
                    "name": "alertmanager",
                    "url": f"http://127.0.0.1:{am_port}/api/v2/alerts",
                    "format": "alertmanager",
                },
                {"name": "broken", "url": f"http://127.0.0.1:{dead_port}/hook", "timeout_s": 1},
            ],
        },
    )
    now_s = int(time.time()) + 2
    live0 = now_s * 1000
    frame = _frames(live0 - BACKFILL_S * 1000)
    faulty = sorted(frame["asset"].unique())[0]
    receiver = Receiver()
    alertmanager = obs.alertmanager_process(am_config, tmp_path / "am", am_port)
    prometheus = obs.prometheus_process(prom_config, tmp_path / "prom", prom_port)
    receiver_cm = _receiver(hook_port, receiver)
    await receiver_cm.__anext__()
    try:
        await asyncio.to_thread(alertmanager.start)
        await asyncio.to_thread(prometheus.start)
        async with running(settings) as service, aiohttp.ClientSession() as http:
            t0 = time.time()
            stream = asyncio.create_task(_stream(kafka_bootstrap, readings, frame, faulty, live0))
            await asyncio.sleep(12)
            # A broken bundle arrives: refused, the old model keeps scoring.
            with (bundle / "model.onnx").open("ab") as f:
                f.write(b"corrupt")
            service.models.request_reload()
            produced = await asyncio.wait_for(stream, timeout=LIVE_S + 60)
            await wait_for(
                lambda: (
                    sample(service, "plantwatch_messages_total", {"topic": readings}) >= produced
                ),
                within=30,
                what="every message to be consumed",
            )
            await wait_for(
                lambda: any(
                    a["labels"].get("asset") == faulty and a["status"] == "firing"
                    for a in receiver.alerts()
                ),
                within=20,
                what=f"Alertmanager to notify a firing alert on {faulty}",
            )
            await wait_for(
                lambda: (
                    sample(
                        service,
                        "plantwatch_webhook_deliveries_total",
                        {"endpoint": "alertmanager", "result": "resent"},
                    )
                    > 0
                ),
                within=10,
                what="open alerts to be re-posted to Alertmanager",
            )
            await asyncio.sleep(3)  # a few more scrapes and rule evaluations
            t1 = time.time()
            prom = Prom(http, prometheus.url)
            await _check_dashboard(prom, t0, t1)
            await _check_rules(prom)
            await _check_alertmanager(http, alertmanager.url, receiver, faulty)
            if out := os.environ.get("PLANTWATCH_DASHBOARD_PNG"):
                await _snapshot(prom, t0, t1, Path(out))
    finally:
        await asyncio.to_thread(prometheus.stop)
        await asyncio.to_thread(alertmanager.stop)
        await receiver_cm.aclose()
    print(f"\nobservability test: {time.monotonic() - t_start:.1f}s")


async def _check_dashboard(prom: Prom, t0: float, t1: float) -> None:
    empty = []
    for panel in dash.PANELS:
        for t in panel.targets:
            expr = dash.resolve(t.expr, rate=RATE)
            result = await (prom.instant(expr) if t.instant else prom.range(expr, t0, t1))
            if not _has_number(result):
                empty.append(f"{panel.title}: {expr}")
    annotation = dash.resolve(dash.ANNOTATION_EXPR)
    if not _has_number(await prom.range(annotation, t0, t1)):
        empty.append(f"annotation: {annotation}")
    assert not empty, "dashboard queries without data:\n" + "\n".join(empty)


METRIC = re.compile(r"\b((?:plantwatch[_:]|process_)[a-z0-9_:]+|up)\b(?!\s*\()")


async def _check_rules(prom: Prom) -> None:
    doc = yaml.safe_load(RULES.read_text())
    rules = [r for g in doc["groups"] for r in g["rules"]]
    missing = []
    for rule in rules:
        await prom.instant(rule["expr"])  # evaluates without error
        for name in set(METRIC.findall(rule["expr"])):
            if not await prom.instant(f'count({{__name__="{name}"}})'):
                missing.append(f"{rule.get('alert') or rule.get('record')}: {name}")
    assert not missing, "metrics named in rules.yml that Prometheus does not have:\n" + "\n".join(
        missing
    )
    groups = (await prom.api("rules"))["groups"]
    loaded = [r for g in groups for r in g["rules"]]
    assert len(loaded) == len(rules)
    unhealthy = [f"{r['name']}: {r.get('lastError')}" for r in loaded if r["health"] != "ok"]
    assert not unhealthy, unhealthy
    active = {a["labels"]["alertname"] for a in (await prom.api("alerts"))["alerts"]}
    assert active >= EXPECTED_ACTIVE, f"not pending/firing: {EXPECTED_ACTIVE - active}"
    for alert in (await prom.api("alerts"))["alerts"]:
        if alert["labels"]["alertname"] == "PlantwatchScoringOnCPU":
            assert alert["labels"]["provider"] == "CPUExecutionProvider"
            assert alert["labels"]["job"] == "plantwatch-gpu"


async def _check_alertmanager(
    http: aiohttp.ClientSession, url: str, receiver: Receiver, faulty: str
) -> None:
    firing = [
        a
        for a in receiver.alerts()
        if a["status"] == "firing" and a["labels"]["alertname"] == "PlantwatchAnomaly"
    ]
    assert firing, receiver.notifications
    # The quickly trained model may flag another asset too; the failing one must be there.
    assert faulty in {a["labels"]["asset"] for a in firing}, firing
    for alert in (a for a in firing if a["labels"]["asset"] == faulty):
        labels, ann = alert["labels"], alert["annotations"]
        assert labels["severity"] in {"warning", "major", "critical"}
        assert labels["model"]
        assert labels["alert_id"]
        assert ann["top_sensors"], ann
        top = [part.split()[0] for part in ann["top_sensors"].split(", ")]
        assert {"vibration_rms", "bearing_temp"} & set(top), ann
        assert float(ann["score"]) > 0
        assert float(ann["threshold"]) > 0
    # Alertmanager holds each open alert under exactly one severity, firing until the lease
    # (re-posted every ALERTMANAGER_RESEND_S), not until resolve_timeout.
    async with http.get(f"{url}/api/v2/alerts", params={"active": "true"}) as resp:
        active = [a for a in await resp.json() if a["labels"]["alertname"] == "PlantwatchAnomaly"]
    by_id: dict[str, list[str]] = {}
    for a in active:
        by_id.setdefault(a["labels"]["alert_id"], []).append(a["labels"]["severity"])
        ends = pd.Timestamp(a["endsAt"]).timestamp()
        if a["status"]["state"] == "active":
            assert ends - time.time() > 30 * 60, a
    if by_id:  # the alert may already have resolved if the run was long
        assert all(len(sev) == 1 for sev in by_id.values()), by_id


async def _snapshot(prom: Prom, t0: float, t1: float, out: Path) -> None:
    snap = _load("plantwatch_snapshot", ROOT / "deploy" / "grafana" / "snapshot.py")
    results: dict[str, list[list[dict[str, Any]]]] = {}
    for panel in dash.PANELS:
        per_target = []
        for t in panel.targets:
            expr = dash.resolve(t.expr, rate=RATE)
            per_target.append(await (prom.instant(expr) if t.instant else prom.range(expr, t0, t1)))
        results[panel.title] = per_target
    assets = PLANT["n_pumps"] + PLANT["n_compressors"]
    title = (
        f"plantwatch dashboard queries over real data: serve + simulated plant ({assets} "
        f"assets, bearing fault injected) + Prometheus, {t1 - t0:.0f} s"
    )
    await asyncio.to_thread(snap.render, dash.PANELS, results, out, title=title)
