"""serve's dead-letter path, metrics and readiness, against the real local Kafka broker."""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pandas as pd
import pytest
from aiokafka import AIOKafkaProducer
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from monitor.bundle import MANIFEST_FILE, load_bundle
from monitor.errors import ConfigError
from monitor.records import Reading, encode_binary, encode_json_batch, encode_json_reading
from monitor.service import SWITCH_INTERVAL_S, Service
from tests.harness import (
    group_input,
    read_topic,
    running,
    sample,
    settings_for,
    wait_consumed,
    wait_for,
)
from training.simulator import PlantConfig, PlantSimulator

pytestmark = [pytest.mark.kafka]

NewTopic = Callable[..., Awaitable[str]]
ASSET = "pump-01"
#: Bad records keyed by another asset than ASSET (the topic has one partition).
KEYS = {"unknown_asset": "boiler-9"}


def _good_readings(n: int) -> tuple[list[int], list[dict[str, float]]]:
    sim = PlantSimulator(PlantConfig(n_pumps=1, n_compressors=0, duration_s=n, n_faults=0, seed=5))
    frame = next(sim.chunks(chunk_steps=n))
    epoch = pd.Timestamp(0, tz="UTC")
    ts = ((frame["timestamp"] - epoch) // pd.Timedelta(milliseconds=1)).tolist()
    values = frame[list(sim.sensors)].to_dict("records")
    return ts, values


def _bad_records(ts: int, values: dict[str, float], features: tuple[str, ...]) -> dict[str, bytes]:
    """One message per way a record can be bad, all keyed by ASSET (same partition)."""
    reading = {"asset": ASSET, "ts": ts, "values": values}

    def js(doc: object) -> bytes:
        return json.dumps(doc).encode()

    wrong_features = tuple(reversed(features))
    return {
        "undecodable": b"\x00not json at all",
        "oversized": js({**reading, "pad": "x" * 5000}),
        "wrong_type": js({**reading, "values": {**values, "flow": "high"}}),
        "missing_sensor": js(
            {**reading, "values": {k: v for k, v in values.items() if k != "flow"}}
        ),
        "unknown_sensor": js({**reading, "values": {**values, "color": 1.0}}),
        "non_finite": js({**reading, "values": {**values, "flow": float("nan")}}),
        "unknown_asset": js({**reading, "asset": "boiler-9"}),
        "bad_timestamp": js({**reading, "ts": "yesterday"}),
        "key_mismatch": js({**reading, "asset": "pump-02"}),
        "out_of_order": js([{**reading, "ts": ts + 2}, {**reading, "ts": ts + 1}]),
        "schema_mismatch": encode_binary(
            ASSET,
            wrong_features,
            np.array([ts], dtype=np.int64),
            np.zeros((1, len(features)), dtype=np.float32),
        ),
    }


async def test_bad_input_is_dead_lettered_and_good_readings_keep_flowing(
    kafka_bootstrap: str, new_topic: NewTopic, plant_bundle: Path
) -> None:
    features = load_bundle(plant_bundle).manifest.features
    readings, alerts, dlq = [await new_topic(partitions=1) for _ in range(3)]
    ts, values = _good_readings(300)
    settings = settings_for(
        kafka_bootstrap,
        plant_bundle,
        readings=readings,
        alerts=alerts,
        dead_letter=dlq,
        input={"asset_patterns": ["pump-*", "compressor-*"], "max_message_bytes": 4096},
    )
    bad = _bad_records(ts[150], values[150], features)
    sent: list[tuple[str, bytes]] = []
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        # Good readings with every bad kind interleaved after the first full window, plus a
        # duplicate and a late reading of the same asset.
        bad_at = {40 + 20 * i: name for i, name in enumerate(bad)}
        for i, (t, v) in enumerate(zip(ts, values, strict=True)):
            if i in bad_at:
                sent.append((bad_at[i], bad[bad_at[i]]))
            sent.append(("ok", encode_json_reading(ASSET, t, v)))
            if i == 260:
                sent.append(("duplicate_timestamp", encode_json_reading(ASSET, t, v)))
                sent.append(("out_of_order_late", encode_json_reading(ASSET, ts[100], v)))
        for name, value in sent:
            await producer.send(readings, value, key=KEYS.get(name, ASSET).encode())
        await producer.flush()
    finally:
        await producer.stop()
    # Where each bad payload was written, as a plain consumer reads it: its dead letter must
    # say so.
    bad_payloads = {value for name, value in sent if name != "ok"}
    origin = {
        r.value: r for r in await read_topic(kafka_bootstrap, readings) if r.value in bad_payloads
    }

    async with running(settings) as service:
        url = service.ops_url
        assert url is not None
        async with aiohttp.ClientSession() as http:
            await wait_consumed(service, readings, len(sent))
            async with http.get(f"{url}/readyz") as resp:
                assert resp.status == 200, await resp.text()
                assert (await resp.json())["checks"]["partitions_assigned"] is True
            async with http.get(f"{url}/healthz") as resp:
                assert resp.status == 200
            async with http.get(f"{url}/metrics") as resp:
                text = await resp.text()
        ok = sample(service, "plantwatch_readings_total", {"result": "ok"})
        scored = sample(service, "plantwatch_windows_scored_total")

    # All good readings were accepted and scored despite the bad ones between them.
    assert ok == len(ts)
    assert scored == len(ts) - 31

    records = await read_topic(kafka_bootstrap, dlq)
    reasons = [dict(r.headers)["plantwatch.reason"].decode() for r in records]
    expected = {name: payload for name, payload in sent if name != "ok"}
    assert len(records) == len(expected), reasons
    by_value = {r.value: r for r in records}
    for name, payload in expected.items():
        record = by_value[payload]  # the original bytes, untouched
        headers = dict(record.headers)
        reason = headers["plantwatch.reason"].decode()
        want = "out_of_order" if name == "out_of_order_late" else name
        assert reason == want, (name, headers["plantwatch.detail"])
        assert headers["plantwatch.topic"].decode() == readings
        assert int(headers["plantwatch.partition"]) == origin[payload].partition
        assert int(headers["plantwatch.offset"]) == origin[payload].offset
        assert int(headers["plantwatch.timestamp"]) == origin[payload].timestamp
        assert record.key == KEYS.get(name, ASSET).encode()
        assert headers["plantwatch.detail"]

    # /metrics parses, and its counters match what was sent.
    families = {f.name: f for f in text_string_to_metric_families(text)}
    dead = Counter(
        {
            s.labels["reason"]: s.value
            for s in families["plantwatch_dead_letter"].samples
            if s.name.endswith("_total")
        }
    )
    assert sum(dead.values()) == len(expected)
    assert dead["out_of_order"] == 2
    readings_by_result = {
        s.labels["result"]: s.value
        for s in families["plantwatch_readings"].samples
        if s.name.endswith("_total")
    }
    assert readings_by_result["ok"] == len(ts)
    assert readings_by_result["duplicate"] == 1
    assert readings_by_result["late"] == 1
    assert readings_by_result["invalid"] == len(bad)
    info = families["plantwatch_model_info"].samples[0].labels
    assert info["provider"] == "CPUExecutionProvider"


async def test_services_for_asset_groups_share_a_topic_and_skip_each_others_assets(
    kafka_bootstrap: str, new_topic: NewTopic, plant_bundle: Path
) -> None:
    """One service per asset group (own bundle, own consumer group) on one readings topic, with
    input.other_asset_patterns naming the other group: each scores its own assets and only
    counts the other's; an asset of no group is dead-lettered by both, a malformed record by
    the service its key belongs to."""
    readings, alerts = await new_topic(partitions=2), await new_topic(partitions=1)
    ts, values = _good_readings(100)
    groups = {"pump-*": "pump-01", "compressor-*": "compressor-01"}
    dead_letters = {pattern: await new_topic(partitions=1) for pattern in groups}
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        for t, v in zip(ts, values, strict=True):
            for asset in groups.values():
                await producer.send(readings, encode_json_reading(asset, t, v), key=asset.encode())
        await producer.send(readings, b"\x00not json", key=b"pump-01")
        stray = encode_json_reading("boiler-9", ts[0], values[0])
        await producer.send(readings, stray, key=b"boiler-9")
        await producer.flush()
    finally:
        await producer.stop()
    sent = 2 * len(ts) + 2

    for pattern, asset in groups.items():
        settings = settings_for(
            kafka_bootstrap,
            plant_bundle,
            readings=readings,
            alerts=alerts,
            dead_letter=dead_letters[pattern],
            input=group_input(pattern, groups),
        )
        async with running(settings) as service:
            await wait_consumed(service, readings, sent)
            ok = sample(service, "plantwatch_readings_total", {"result": "ok"})
            other = sample(service, "plantwatch_readings_total", {"result": "other_asset"})
            invalid = sample(service, "plantwatch_readings_total", {"result": "invalid"})
            scored = sample(service, "plantwatch_windows_scored_total")
            store = service.pipeline.store
            tracked = (len(store), asset in store)
        # The undecodable record is keyed by the pump: the pump service dead-letters it, the
        # compressor service passes it over unparsed. The stray asset is nobody's: both do.
        mine = pattern == "pump-*"
        assert (ok, other, invalid) == (len(ts), len(ts) + (not mine), 1 + mine), pattern
        assert scored == len(ts) - 31
        assert tracked == (1, True)
        reasons = {
            r.value: dict(r.headers)["plantwatch.reason"]
            for r in await read_topic(kafka_bootstrap, dead_letters[pattern])
        }
        expected = {stray: b"unknown_asset"}
        if mine:
            expected[b"\x00not json"] = b"undecodable"
        assert reasons == expected, pattern

    # Without other_asset_patterns, the other group's assets are dead letters too.
    dlq = await new_topic(partitions=1)
    settings = settings_for(
        kafka_bootstrap,
        plant_bundle,
        readings=readings,
        alerts=alerts,
        dead_letter=dlq,
        input={"asset_patterns": ["pump-*"]},
    )
    async with running(settings) as service:
        await wait_consumed(service, readings, sent)
    records = await read_topic(kafka_bootstrap, dlq)
    reasons = Counter(dict(r.headers)["plantwatch.reason"] for r in records)
    assert reasons == {b"unknown_asset": len(ts) + 1, b"undecodable": 1}


async def test_one_service_routes_each_group_of_assets_to_its_bundle(
    kafka_bootstrap: str, new_topic: NewTopic, plant_bundle: Path
) -> None:
    """Settings.routes: one service, one read of the topic, a bundle per group of assets. Each
    reading is scored by exactly one route, the first whose patterns match its asset (keyed or
    not); a message no route takes is dead-lettered once, not once per route."""
    readings, alerts, dlq = [await new_topic(partitions=2) for _ in range(3)]
    ts, values = _good_readings(100)
    keyed = ("pump-01", "compressor-01", "crusher-01")
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        for t, v in zip(ts, values, strict=True):
            for asset in keyed:
                await producer.send(readings, encode_json_reading(asset, t, v), key=asset.encode())
            # No key (one partition, else its readings would arrive out of order).
            await producer.send(readings, encode_json_reading("compressor-02", t, v), partition=0)
        bad = {
            b"\x00not json": b"pump-01",
            b"\x00not json either": b"compressor-01",
            encode_json_reading("boiler-9", ts[0], values[0]): b"boiler-9",
            encode_json_reading("boiler-8", ts[0], values[0]): None,
            encode_json_batch(
                [Reading("pump-02", ts[0], values[0]), Reading("compressor-03", ts[0], values[0])]
            ): None,
        }
        for value, key in bad.items():
            await producer.send(readings, value, key=key)
        await producer.flush()
    finally:
        await producer.stop()
    sent = 4 * len(ts) + len(bad)

    settings = settings_for(
        kafka_bootstrap,
        plant_bundle,
        readings=readings,
        alerts=alerts,
        dead_letter=dlq,
        input={"asset_patterns": ["pump-*"]},
        routes=[
            {"name": "compressors", "asset_patterns": ["compressor-*"], "model": plant_bundle},
            # compressor-* match this one too: the first route listed takes them.
            {"name": "c-rest", "asset_patterns": ["c*"], "model": plant_bundle},
        ],
    )
    async with running(settings) as service:
        await wait_consumed(service, readings, sent)
        results = {
            result: sample(service, "plantwatch_readings_total", {"result": result})
            for result in ("ok", "other_asset", "invalid")
        }
        scored = sample(service, "plantwatch_windows_scored_total")
        every = (*keyed, "compressor-02", "compressor-03", "pump-02", "boiler-8", "boiler-9")
        tracked = {
            route.name: sorted(a for a in every if a in route.store) for route in service.routes
        }
        scores = {
            (asset, route): sample(
                service, "plantwatch_anomaly_score", {"asset": asset, "route": route}
            )
            for asset, route in (("pump-01", "default"), ("compressor-02", "compressors"))
        }
        thresholds = [
            sample(service, "plantwatch_anomaly_threshold", {"route": name})
            for name in ("default", "compressors", "c-rest")
        ]
    assert results == {"ok": 4 * len(ts), "other_asset": 0, "invalid": len(bad)}
    assert scored == 4 * (len(ts) - 31)
    assert tracked == {
        "compressors": ["compressor-01", "compressor-02"],
        "c-rest": ["crusher-01"],
        "default": ["pump-01"],
    }
    assert all(score > 0 for score in scores.values()), scores
    assert all(threshold > 0 for threshold in thresholds), thresholds
    records = await read_topic(kafka_bootstrap, dlq)
    assert sorted(r.value for r in records) == sorted(bad)
    reasons = Counter(dict(r.headers)["plantwatch.reason"] for r in records)
    assert reasons == {b"undecodable": 2, b"unknown_asset": 3}


async def test_each_route_reloads_its_own_bundle(
    kafka_bootstrap: str, new_topic: NewTopic, plant_bundle: Path, tmp_path: Path
) -> None:
    """A route's bundle is watched on its own: a retuned one replaces that route's model, its
    threshold and model_info series, and leaves the default route's alone."""
    readings, alerts, dlq = [await new_topic(partitions=1) for _ in range(3)]
    route_bundle = tmp_path / "compressors"
    shutil.copytree(plant_bundle, route_bundle)
    settings = settings_for(
        kafka_bootstrap,
        plant_bundle,
        readings=readings,
        alerts=alerts,
        dead_letter=dlq,
        input={"asset_patterns": ["pump-*"]},
        model={"reload": "watch", "reload_poll_s": 0.2},
        routes=[{"name": "comp", "asset_patterns": ["compressor-*"], "model": route_bundle}],
    )
    async with running(settings) as service:
        route, default = service.routes
        threshold = route.models.current.threshold
        staging = tmp_path / "staging"
        shutil.copytree(plant_bundle, staging)
        doc = json.loads((staging / MANIFEST_FILE).read_text())
        doc["model"]["version"] = "v2-compressors"
        doc["threshold"]["value"] *= 2
        (staging / MANIFEST_FILE).write_text(json.dumps(doc))
        shutil.rmtree(route_bundle)
        staging.rename(route_bundle)
        await wait_for(
            lambda: route.models.current.ref.version == "v2-compressors",
            within=20,
            what="the route's retuned bundle to be swapped in",
        )
        assert default.models.current.ref.version != "v2-compressors"
        assert default.models.current.threshold == pytest.approx(threshold)
        thresholds = {
            name: sample(service, "plantwatch_anomaly_threshold", {"route": name})
            for name in ("default", "comp")
        }
        assert thresholds == pytest.approx({"default": threshold, "comp": 2 * threshold})
        info = [
            s.labels
            for family in service.registry.collect()
            if family.name == "plantwatch_model_info"
            for s in family.samples
        ]
        assert sorted((i["route"], i["version"]) for i in info) == sorted(
            [("comp", "v2-compressors"), ("default", default.models.current.ref.version)]
        )


async def test_readyz_follows_partition_ownership(
    kafka_bootstrap: str, new_topic: NewTopic, plant_bundle: Path
) -> None:
    """Two instances, one partition: only the owner is ready; the other takes over on stop."""
    readings, alerts, dlq = [await new_topic(partitions=1) for _ in range(3)]
    settings = settings_for(
        kafka_bootstrap, plant_bundle, readings=readings, alerts=alerts, dead_letter=dlq
    )

    async def readyz(http: aiohttp.ClientSession, service: Service) -> tuple[int, dict[str, Any]]:
        async with http.get(f"{service.ops_url}/readyz") as resp:
            return resp.status, await resp.json()

    async def until(check: Callable[[], Awaitable[bool]], what: str) -> None:
        for _ in range(300):
            if await check():
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"timed out waiting until {what}")

    before = sys.getswitchinterval()
    async with aiohttp.ClientSession() as http, running(settings) as first:

        async def first_ready() -> bool:
            return (await readyz(http, first))[0] == 200

        await until(first_ready, "the first instance is ready")
        async with running(settings) as second:

            async def one_owner() -> bool:
                statuses = [(await readyz(http, s))[0] for s in (first, second)]
                return sorted(statuses) == [200, 503]

            await until(one_owner, "exactly one instance owns the partition")
            (s1, b1), (_, b2) = await readyz(http, first), await readyz(http, second)
            owner, idle, idle_body = (first, second, b2) if s1 == 200 else (second, first, b1)
            assert idle_body["checks"] == {
                "model_loaded": True,
                "partitions_assigned": False,
                "broker_reachable": True,
            }
            assert sample(idle, "plantwatch_ready") == 0
            assert sample(owner, "plantwatch_ready") == 1

            # The owner stops: the other instance takes the partition over and becomes ready.
            await owner.stop()

            async def idle_ready() -> bool:
                return (await readyz(http, idle))[0] == 200

            await until(idle_ready, "the remaining instance takes the partition over")
            # The GIL switch interval is the service's while one runs, Python's once none does.
            assert sys.getswitchinterval() == pytest.approx(SWITCH_INTERVAL_S)
    assert sys.getswitchinterval() == pytest.approx(before)


async def test_missing_topics_stop_the_start_with_one_line(
    kafka_bootstrap: str, new_topic: NewTopic, plant_bundle: Path
) -> None:
    readings = await new_topic(partitions=1)
    settings = settings_for(
        kafka_bootstrap,
        plant_bundle,
        readings=readings,
        alerts="no-such-alerts-topic",
        dead_letter="no-such-dlq-topic",
    )
    service = Service(settings, registry=CollectorRegistry())
    with pytest.raises(ConfigError) as info:
        await service.start()
    await service.stop()
    message = str(info.value)
    assert "no topic no-such-alerts-topic, no-such-dlq-topic" in message
    assert "\n" not in message
