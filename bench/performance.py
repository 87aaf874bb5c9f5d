"""Throughput and memory of the monitor against its own limits, measured in one run.

    python bench/performance.py                  # full run, writes bench/results/performance.md
    python bench/performance.py --smoke          # seconds; used by the test suite

Against the local Kafka broker (``deploy/local/kafka.py start``, or ``KAFKA_BOOTSTRAP_SERVERS``)
it pre-fills readings topics (synthetic random-walk readings of many assets; the JSON-single,
JSON-batch and binary wire formats) and measures, for each:

1. **consume limit**: raw aiokafka ``getmany`` of the same topic, no processing;
2. **scoring limit**: ONNX Runtime windows/s on pre-built windows at the service's batch sizes;
3. **plantwatch**: the real :class:`monitor.service.Service` (decode → windows → score → detector
   → transactional commit), stride 1, alerts enabled;
4. **naive**: what one writes by hand — ``json.loads`` per message, a ``deque`` window per
   asset, one ``InferenceSession.run`` per window.

and reports readings/s, plantwatch / serial limit (serial limit = 1 / (1/consume + 1/scoring),
the best possible when both costs share the same cores) and plantwatch / naive, as medians of
``--runs`` runs with their min–max spread; then the window store's memory per asset.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

import monitor
from monitor.bundle import Bundle
from monitor.config import Settings
from monitor.records import encode_binary
from monitor.scoring import Scorer
from monitor.service import Service

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine_info import cpu_model

ROOT = Path(__file__).resolve().parents[1]
FORMATS = ("json", "json-batch", "binary")
BATCH = 100  # readings per message for json-batch and binary (a gateway's batch)


@dataclass
class Row:
    name: str
    values: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    def cell(self) -> str:
        if len(self.values) == 1:
            return f"{self.values[0]:,.0f}"
        return f"{self.median:,.0f} ({min(self.values):,.0f}–{max(self.values):,.0f})"


# --- data and bundles ------------------------------------------------------------------------


def synthetic(n_assets: int, steps: int, n_features: int, seed: int = 0) -> np.ndarray:
    """[steps, assets, features] float32 random walks around per-asset levels."""
    rng = np.random.default_rng(seed)
    # One level for every asset: the bundle trained on a few of them fits all, so alerts stay
    # rare, as in a plant of similar machines.
    level = np.random.default_rng(0).uniform(1, 100, size=(1, 1, n_features))
    walk = np.cumsum(rng.normal(0, 0.05, size=(steps, n_assets, n_features)), axis=0)
    return (level + walk + rng.normal(0, 0.1, size=walk.shape)).astype(np.float32)


def train_bundle(workdir: Path, family: str, n_features: int, window: int) -> Bundle:
    """A small bundle on synthetic data (throughput does not depend on detection quality)."""
    import pandas as pd

    from training.fit import FitConfig
    from training.pipeline import TrainConfig, train_bundle

    values = synthetic(4, 3000, n_features, seed=1)
    features = [f"s{i:02d}" for i in range(n_features)]
    frames = []
    for a in range(values.shape[1]):
        frame = pd.DataFrame(values[:, a, :], columns=features)
        frame.insert(0, "asset", f"t{a}")
        frame.insert(0, "timestamp", pd.date_range("2026-01-01", periods=len(frame), freq="s"))
        frames.append(frame)
    data = workdir / f"train-{n_features}.parquet"
    pd.concat(frames).to_parquet(data)
    out = workdir / f"bundle-{family}-{n_features}"
    config = TrainConfig(
        data=data,
        out=out,
        family=family,
        window=window,
        stride=4,
        fit=FitConfig(epochs=2, progress=False),
        name=f"bench-{family}",
    )
    return train_bundle(config).bundle


def messages(
    fmt: str, features: list[str], values: np.ndarray, t0: int
) -> list[tuple[bytes, bytes]]:
    """Kafka (key, value) pairs for readings [steps, assets, features] in one wire format."""
    steps, n_assets, _ = values.shape
    assets = [f"asset-{a:05d}" for a in range(n_assets)]
    keys = [a.encode() for a in assets]
    ts = t0 + np.arange(steps, dtype=np.int64) * 1000
    out: list[tuple[bytes, bytes]] = []
    if fmt == "json":
        rows = values.tolist()
        for i, step in enumerate(rows):
            t = int(ts[i])
            for a, row in enumerate(step):
                out.append(
                    (
                        keys[a],
                        json.dumps(
                            {"asset": assets[a], "ts": t, "values": row}, separators=(",", ":")
                        ).encode(),
                    )
                )
        return out
    for start in range(0, steps, BATCH):
        chunk = slice(start, min(start + BATCH, steps))
        for a in range(n_assets):
            if fmt == "binary":
                value = encode_binary(assets[a], features, ts[chunk], values[chunk, a, :])
            else:
                value = json.dumps(
                    [
                        {"asset": assets[a], "ts": int(t), "values": row}
                        for t, row in zip(
                            ts[chunk].tolist(), values[chunk, a, :].tolist(), strict=True
                        )
                    ],
                    separators=(",", ":"),
                ).encode()
            out.append((keys[a], value))
    return out


async def create_topics(bootstrap: str, topics: list[str], partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(t, partitions, 1) for t in topics])
    finally:
        await admin.close()


async def prefill(
    bootstrap: str, topic: str, batch: list[tuple[bytes, bytes]], partitions: int
) -> None:
    await create_topics(bootstrap, [topic], partitions)
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        linger_ms=20,
        max_batch_size=256 << 10,
        max_request_size=8 << 20,
    )
    await producer.start()
    try:
        pending = []
        for key, value in batch:
            pending.append(await producer.send(topic, value, key=key))
            if len(pending) >= 20_000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


# --- the four measurements -------------------------------------------------------------------


def fresh_consumer(bootstrap: str, topic: str, role: str) -> AIOKafkaConsumer:
    """A consumer in a new group, so it reads ``topic`` from the beginning."""
    return AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"bench-{role}-{uuid.uuid4().hex[:6]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )


async def consume_limit(bootstrap: str, topic: str, n_messages: int) -> float:
    """Seconds to fetch every message of ``topic`` with ``getmany`` and nothing else."""
    consumer = fresh_consumer(bootstrap, topic, "raw")
    await consumer.start()
    try:
        seen = 0
        started = time.perf_counter()
        while seen < n_messages:
            batch = await consumer.getmany(timeout_ms=200, max_records=5000)
            seen += sum(len(records) for records in batch.values())
        return time.perf_counter() - started
    finally:
        await consumer.stop()


def scoring_limit(bundle: Bundle, batch_sizes: tuple[int, ...], seconds: float) -> dict[int, float]:
    """Windows/s of the bundle's graph at each batch size (pre-built windows)."""
    scorer = Scorer(bundle, device="cpu")
    length, n_features = scorer.window_shape
    rng = np.random.default_rng(0)
    out = {}
    for size in batch_sizes:
        windows = rng.standard_normal((size, length, n_features)).astype(np.float32)
        scorer.score(windows)  # warm-up
        n, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            scorer.score(windows)
            n += size
        out[size] = n / (time.perf_counter() - started)
    return out


async def start_service(
    bootstrap: str, topic: str, bundle: Bundle, **input_settings: Any
) -> tuple[Service, asyncio.Task[None]]:
    """The real service on ``topic`` in a fresh group, with its own alert and dead-letter topics."""
    from prometheus_client import CollectorRegistry

    tag = uuid.uuid4().hex[:6]
    await create_topics(bootstrap, [f"bench-dlq-{tag}", f"bench-alerts-{tag}"], 1)
    settings = Settings.model_validate(
        {
            "kafka": {"bootstrap_servers": bootstrap},
            "input": {
                "topics": [topic],
                "group_id": f"bench-pw-{tag}",
                "dead_letter_topic": f"bench-dlq-{tag}",
                **input_settings,
            },
            "model": {"path": str(bundle.path), "device": "cpu", "reload": "off"},
            "alerts": {"topic": f"bench-alerts-{tag}"},
            "delivery": {"enabled": False},
            "http": {"host": "127.0.0.1", "port": 0},
            "instance_id": f"bench-{tag}",
        }
    )
    service = Service(settings, registry=CollectorRegistry())
    await service.start()
    return service, asyncio.create_task(service.run())


async def plantwatch_run(bootstrap: str, topic: str, bundle: Bundle, n_messages: int) -> float:
    """Seconds for the real service to consume, score and commit every message of ``topic``."""
    service, task = await start_service(bootstrap, topic, bundle, fetch_max_records=5000)
    try:
        started = time.perf_counter()
        while True:
            done = (
                service.registry.get_sample_value("plantwatch_messages_total", {"topic": topic})
                or 0.0
            )
            if done >= n_messages:
                return time.perf_counter() - started
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
    finally:
        service.request_stop()
        await service.stop()


async def naive_run(bootstrap: str, topic: str, bundle: Bundle, n_messages: int) -> float:
    """Seconds for the hand-written loop: json.loads, a deque per asset, one run per window."""
    m = bundle.manifest
    session = ort.InferenceSession(str(bundle.onnx_path), providers=["CPUExecutionProvider"])
    features = list(m.features)
    windows: dict[str, collections.deque[list[float]]] = {}
    consumer = fresh_consumer(bootstrap, topic, "naive")
    await consumer.start()
    try:
        seen = 0
        started = time.perf_counter()
        while seen < n_messages:
            batch = await consumer.getmany(timeout_ms=200, max_records=5000)
            for records in batch.values():
                for record in records:
                    doc = json.loads(record.value)
                    for reading in doc if isinstance(doc, list) else [doc]:
                        values = reading["values"]
                        row = [values[f] for f in features] if isinstance(values, dict) else values
                        window = windows.setdefault(
                            reading["asset"], collections.deque(maxlen=m.window.length)
                        )
                        window.append(row)
                        if len(window) == m.window.length:
                            session.run(None, {"window": np.array([window], dtype=np.float32)})
                seen += len(records)
            await consumer.commit()
        return time.perf_counter() - started
    finally:
        await consumer.stop()


PACED_PRODUCER = """
import asyncio, json, sys, time
from aiokafka import AIOKafkaProducer

async def main(bootstrap, topic, n_assets, seconds, n_features):
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    slices = 10  # each asset reports once a second; the plant is spread over the second
    per = (n_assets + slices - 1) // slices
    values = [round(50.0 + 0.1 * i, 3) for i in range(n_features)]
    start = time.monotonic()
    tick = 0
    while time.monotonic() - start < seconds:
        due = start + tick / slices
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        part = tick % slices
        ts = int(time.time() * 1000)
        for a in range(part * per, min(n_assets, (part + 1) * per)):
            asset = f"asset-{a:06d}"
            doc = {"asset": asset, "ts": ts, "values": values}
            await producer.send(topic, json.dumps(doc).encode(), key=asset.encode())
        tick += 1
    await producer.flush()
    await producer.stop()

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])))
"""


async def latency_run(
    bootstrap: str, bundle: Bundle, rate: int, seconds: float
) -> tuple[float, float, int]:
    """p50 and p99 seconds from a reading's timestamp to its window being scored, at ``rate``.

    ``rate`` assets each send one JSON reading a second (timestamp = wall clock), spread over
    the second, from a separate process; the figures come from the service's own
    ``end_to_end_latency_seconds`` histogram, interpolated within buckets.
    """
    topic = f"bench-latency-{uuid.uuid4().hex[:6]}"
    await create_topics(bootstrap, [topic], 4)
    service, task = await start_service(bootstrap, topic, bundle, fetch_timeout_ms=10)
    try:
        await asyncio.sleep(3)  # join the group before readings arrive
        producer = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            PACED_PRODUCER,
            bootstrap,
            topic,
            str(rate),
            str(seconds),
            str(bundle.manifest.n_features),
        )
        await producer.wait()
        await asyncio.sleep(2)
        if task.done():
            task.result()
        buckets = []
        for metric in service.registry.collect():
            if metric.name == "plantwatch_end_to_end_latency_seconds":
                buckets = [
                    (float(sample.labels["le"]), sample.value)
                    for sample in metric.samples
                    if sample.name.endswith("_bucket")
                ]
        total = int(buckets[-1][1]) if buckets else 0
        return _quantile(buckets, 0.5), _quantile(buckets, 0.99), total
    finally:
        service.request_stop()
        await service.stop()


def _quantile(buckets: list[tuple[float, float]], q: float) -> float:
    """Prometheus' histogram_quantile: linear interpolation within the bucket holding ``q``."""
    total = buckets[-1][1]
    if total == 0:
        return float("nan")
    rank = q * total
    lower, below = 0.0, 0.0
    for upper, count in buckets:
        if count >= rank:
            if upper == float("inf"):
                return lower
            return lower + (upper - lower) * (rank - below) / max(count - below, 1e-9)
        lower, below = upper, count
    return lower


def store_memory(n_assets: int, length: int, n_features: int) -> int:
    """Peak RSS bytes of a process holding full windows for ``n_assets`` (subprocess)."""
    code = f"""
import numpy as np
from monitor.windows import WindowStore
from monitor.detector import Detector, DetectorConfig
from monitor.events import ModelRef
store = WindowStore(
    length={length}, n_features={n_features}, interval_ms=1000, max_assets={n_assets}
)
det = Detector(
    DetectorConfig(k=3, n=5),
    threshold=1.0,
    features=[f"s{{i}}" for i in range({n_features})],
    model=ModelRef("m", "v", "0" * 64),
)
ts = np.arange({length}, dtype=np.int64) * 1000 + 1_767_225_600_000
values = np.ones(({length}, {n_features}), dtype=np.float32)
offsets = np.arange({length}, dtype=np.int64)
for a in range({n_assets}):
    store.append(f"asset-{{a:06d}}", ts, values, offsets, a % 8)
    if a % 1000 == 999:
        store.collect()
store.collect()
# VmHWM belongs to this address space; ru_maxrss would carry the parent's peak across exec.
status = open("/proc/self/status").read()
print(int(next(l for l in status.splitlines() if l.startswith("VmHWM")).split()[1]) * 1024)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


# --- driver ----------------------------------------------------------------------------------


def machine() -> str:
    cpu = cpu_model()
    import aiokafka

    ext = "with" if _aiokafka_c_ext() else "WITHOUT"
    return (
        f"{os.cpu_count()} cores, {cpu}; Python {platform.python_version()}, "
        f"plantwatch {monitor.__version__}, onnxruntime {ort.__version__}, "
        f"aiokafka {aiokafka.__version__} ({ext} its C extension), numpy {np.__version__}"
    )


def _aiokafka_c_ext() -> bool:
    try:
        from aiokafka.record import _crecords  # noqa: F401
    except ImportError:
        return False
    return True


async def main(args: argparse.Namespace) -> int:
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    workdir = Path(tempfile.mkdtemp(prefix="pw-bench-"))
    lines: list[str] = []
    say: Callable[[str], None] = lambda text: (print(text, flush=True), lines.append(text))  # noqa: E731
    say(f"# Performance: {'smoke run' if args.smoke else 'plantwatch against its limits'}\n")
    say(f"Command: `python bench/performance.py {' '.join(sys.argv[1:])}`  ")
    say(f"Machine: {machine()}  ")
    say(
        f"Data: {args.assets} assets × {args.steps} steps per topic, window {args.window}, "
        f"{args.partitions} partitions, {args.runs} run(s) each (median, min–max).\n"
    )
    results: dict[str, Any] = {}
    for n_features in args.sensors:
        bundles = {
            fam: train_bundle(workdir, fam, n_features, args.window) for fam in args.families
        }
        dense = bundles["dense"]
        features = list(dense.manifest.features)
        values = synthetic(args.assets, args.steps, n_features)
        readings = values.shape[0] * values.shape[1]
        say(f"## {n_features} sensors, {readings:,} readings per topic\n")
        scoring = {
            fam: scoring_limit(b, args.batch_sizes, args.score_seconds)
            for fam, b in bundles.items()
        }
        say("Scoring limit (ONNX Runtime windows/s, CPU):\n")
        say("| family | " + " | ".join(f"batch {b}" for b in args.batch_sizes) + " |")
        say("|---|" + "---|" * len(args.batch_sizes))
        for fam, by_size in scoring.items():
            say(f"| {fam} | " + " | ".join(f"{by_size[b]:,.0f}" for b in args.batch_sizes) + " |")
        score_rate = max(scoring["dense"].values())
        say("")
        say(
            "| format | consume limit | serial limit | plantwatch | naive "
            "| pw / serial | pw / naive |"
        )
        say("|---|---|---|---|---|---|---|")
        for fmt in args.formats:
            topic = f"bench-{fmt}-{n_features}-{uuid.uuid4().hex[:6]}"
            msgs = messages(fmt, features, values, t0=1_767_225_600_000)
            await prefill(bootstrap, topic, msgs, args.partitions)
            consume, pw, naive = Row("consume"), Row("plantwatch"), Row("naive")
            for _ in range(args.runs):
                consume.values.append(readings / await consume_limit(bootstrap, topic, len(msgs)))
                pw.values.append(
                    readings / await plantwatch_run(bootstrap, topic, dense, len(msgs))
                )
                if fmt != "binary":
                    naive.values.append(
                        readings / await naive_run(bootstrap, topic, dense, len(msgs))
                    )
            serial = 1.0 / (1.0 / consume.median + 1.0 / score_rate)
            naive_cell = naive.cell() if naive.values else "n/a"
            ratio_naive = f"{pw.median / naive.median:.1f}×" if naive.values else "n/a"
            say(
                f"| {fmt} | {consume.cell()} | {serial:,.0f} | {pw.cell()} | {naive_cell} | "
                f"{pw.median / serial:.2f} | {ratio_naive} |"
            )
            results[f"{n_features}/{fmt}"] = {
                "consume": consume.median,
                "serial": serial,
                "plantwatch": pw.median,
                "naive": naive.median if naive.values else None,
            }
        say("\nReadings/s. The naive loop has no binary decoder, so it only reads JSON.\n")
        json_rate = results.get(f"{n_features}/json", {}).get("plantwatch")
        if json_rate and args.latency_seconds > 0:
            rate = max(1, int(0.5 * json_rate))
            p50, p99, n = await latency_run(bootstrap, dense, rate, args.latency_seconds)
            say(
                f"Latency at 50 % load ({rate:,} JSON readings/s: {rate:,} assets at 1 Hz, "
                f"{args.latency_seconds:g} s, {n:,} sampled windows), reading timestamp → "
                f"scored: **p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms** (from the "
                "service's own histogram, interpolated within its buckets: 5, 10, 25, 50, 100 ms "
                "…).\n"
            )
    say("## Memory of the window store (window 64 × 16)\n")
    say("| assets | peak RSS |")
    say("|---|---|")
    for n in args.memory_assets:
        say(f"| {n:,} | {store_memory(n, 64, 16) / 2**20:,.0f} MiB |")
    say("")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n")
        print(f"wrote {args.out}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny sizes, seconds (for tests)")
    p.add_argument("--assets", type=int, default=1000)
    p.add_argument("--steps", type=int, default=500, help="readings per asset")
    p.add_argument("--sensors", type=lambda s: [int(x) for x in s.split(",")], default=[8, 16])
    p.add_argument("--window", type=int, default=32)
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--formats", type=lambda s: s.split(","), default=list(FORMATS))
    p.add_argument("--families", type=lambda s: s.split(","), default=["dense", "conv"])
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "performance.md")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    args.batch_sizes = (256, 1024, 4096)
    args.latency_seconds = 60.0
    args.score_seconds = 2.0
    args.memory_assets = (1_000, 10_000, 100_000)
    if args.smoke:
        args.assets, args.steps, args.sensors, args.runs = 20, 50, [8], 1
        args.families, args.batch_sizes, args.score_seconds = ["dense"], (64,), 0.2
        args.memory_assets = (100,)
        args.latency_seconds = 0.0
    return args


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse())))
