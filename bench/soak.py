#!/usr/bin/env python3
"""Soak test: serve under steady load with a fault every few minutes, then an audit.

    python bench/soak.py                                  # 1 hour, a fault every 5 minutes
    python bench/soak.py --minutes 2 --fault-every 20     # a short run

Runs on a *private* broker (its own home, data and ports, from the install made by
``deploy/local/kafka.py install``), so the shared one is never touched. Two ``serve`` instances
in one group consume a 6-partition topic that a producer fills at ``--rate`` readings/s (pick
about half of the capacity ``bench/scaleout.py`` measured). Faults, in turn:

* ``sigkill``: SIGKILL one instance, restart it 5 s later;
* ``sigterm``: SIGTERM one instance (graceful), restart it;
* ``broker``: stop the broker for ``--outage`` seconds, then restart it;
* ``bundle``: write a truncated manifest into the model directory, restore it 5 s later;
* ``flood``: 2,000 readings of unknown new assets beyond ``windows.max_assets``.

At the end the producer stops and the group catches up; the audit then checks that every
reading after each asset's first full window was scored (scores topic, read_committed), that no
alert event id appears twice, and reports each fault's recovery time (until the group has scored
what was produced up to 1 s after the fault) and the instances' peak RSS. Results go to
``bench/results/reliability.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import math
import os
import platform
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine_info import cpu_model  # noqa: E402
from scaleout import train_sine_bundle  # noqa: E402

from monitor import offsets  # noqa: E402

PARTITIONS = 6
START_MS = 1_767_225_600_000
WINDOW = 32  # the sine bundle's window
PLANTWATCH = str(Path(sys.executable).with_name("plantwatch"))
FAULTS = ("sigkill", "broker", "flood", "bundle", "sigterm")


def load_local_kafka() -> Any:
    spec = importlib.util.spec_from_file_location("pw_local_kafka", ROOT / "deploy/local/kafka.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["pw_local_kafka"] = module
    spec.loader.exec_module(module)
    return module


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def reading(asset: str, step: int) -> bytes:
    base = math.sin(2 * math.pi * step / 50.0)
    # Every third block of 50 steps is 40x off on one sensor: alerts open and resolve.
    scale = 40.0 if (step // 50) % 3 == 2 else 1.0
    values = {"a": base * scale, "b": 2 * base + 10, "c": math.cos(2 * math.pi * step / 50.0)}
    return json.dumps({"asset": asset, "ts": START_MS + 1000 * step, "values": values}).encode()


class Soak:
    def __init__(self, args: argparse.Namespace, cluster: Any, bundle: Path, work: Path) -> None:
        self.args, self.cluster, self.work = args, cluster, work
        self.bootstrap = cluster.listener("PLAINTEXT")
        self.model_dir = work / "model"
        shutil.copytree(bundle, self.model_dir)
        self.bundle = bundle
        self.assets = [f"unit-{i:03d}" for i in range(args.assets)]
        self.steps = 0
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.peak_rss: dict[str, int] = {}
        self.events: list[dict[str, Any]] = []
        self.tps = [TopicPartition("soak.readings", p) for p in range(PARTITIONS)]
        self.doc: dict[str, Any] = {
            "kafka": {"bootstrap_servers": self.bootstrap, "transaction_timeout_ms": 15_000},
            "input": {
                "topics": ["soak.readings"],
                "group_id": "soak",
                "dead_letter_topic": "soak.dlq",
            },
            "model": {"path": str(self.model_dir), "device": "cpu", "threads": 1},
            "windows": {"max_assets": args.assets + 20},
            "detector": {"k": 3, "n": 5, "m": 5},
            "alerts": {"topic": "soak.alerts"},
            "scores": {"topic": "soak.scores"},
            "delivery": {"enabled": False},
            "http": {"host": "127.0.0.1", "port": 0},
            "shutdown_deadline_s": 15,
        }

    def start(self, name: str) -> None:
        config = self.work / f"{name}.yaml"
        config.write_text(yaml.safe_dump({**self.doc, "instance_id": name}))
        env = {k: v for k, v in os.environ.items() if not k.startswith("PLANTWATCH_")}
        with (self.work / f"{name}.log").open("ab") as log:
            self.procs[name] = subprocess.Popen(
                [PLANTWATCH, "--log-format", "json", "serve", "--config", str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )

    def sample_rss(self) -> None:
        for name, proc in self.procs.items():
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        kb = int(line.split()[1])
                        self.peak_rss[name] = max(self.peak_rss.get(name, 0), kb)

    async def produce(self, stop: asyncio.Event) -> None:
        """Steady load; readings are retried through broker outages (nothing skipped)."""
        per_step = len(self.assets)
        interval = per_step / self.args.rate
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap, acks="all", enable_idempotence=True, linger_ms=10
        )
        await producer.start()
        try:
            next_at = time.monotonic()
            while not stop.is_set():
                futures = [
                    await producer.send("soak.readings", reading(a, self.steps), key=a.encode())
                    for a in self.assets
                ]
                await asyncio.gather(*futures)
                self.steps += 1
                next_at += interval
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        finally:
            await producer.stop()

    async def scored_through(self) -> dict[TopicPartition, int]:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        try:
            committed = await admin.list_consumer_group_offsets("soak", partitions=self.tps)
        finally:
            await admin.close()
        out = {}
        for tp in self.tps:
            meta = committed.get(tp)
            state = offsets.decode(meta.metadata if meta is not None else None)
            out[tp] = state.scored_through if state is not None else -1
        return out

    async def ends(self) -> dict[TopicPartition, int]:
        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap)
        await consumer.start()
        try:
            ends: dict[TopicPartition, int] = await consumer.end_offsets(self.tps)
            return ends
        finally:
            await consumer.stop()

    async def caught_up(self, since: float, limit: float) -> float | None:
        await asyncio.sleep(max(0.0, since + 1.0 - time.monotonic()))
        while True:
            try:
                target = await self.ends()
                break
            except Exception:  # broker still coming back
                await asyncio.sleep(1.0)
        while time.monotonic() - since < limit:
            try:
                through = await self.scored_through()
            except Exception:
                through = {}
            if through and all(through[tp] >= e - 1 for tp, e in target.items() if e > 0):
                return time.monotonic() - since
            self.sample_rss()
            await asyncio.sleep(0.5)
        return None

    async def fault(self, kind: str, n: int) -> None:
        name = ("a", "b")[n % 2]
        at = time.monotonic()
        if kind == "sigkill":
            self.procs[name].send_signal(signal.SIGKILL)
            self.procs[name].wait(10)
            await asyncio.sleep(5)
            self.start(name)
        elif kind == "sigterm":
            self.procs[name].send_signal(signal.SIGTERM)
            await asyncio.to_thread(self.procs[name].wait, 30)
            self.start(name)
        elif kind == "broker":
            await asyncio.to_thread(self.cluster.stop_kafka)
            await asyncio.sleep(self.args.outage)
            await asyncio.to_thread(self.cluster.start)
        elif kind == "bundle":
            manifest = self.model_dir / "manifest.json"
            text = manifest.read_text()
            manifest.write_text(text[: len(text) // 2])
            await asyncio.sleep(5)
            manifest.write_text(text)
        elif kind == "flood":
            async with AIOKafkaProducer(bootstrap_servers=self.bootstrap) as producer:
                futures = [
                    await producer.send(
                        "soak.readings", reading(f"flood-{i}", 0), key=f"flood-{i}".encode()
                    )
                    for i in range(2000)
                ]
                await asyncio.gather(*futures)
        recovered = await self.caught_up(at, limit=120)
        self.events.append({"fault": kind, "target": name, "recovery_s": recovered})
        shown = f"{recovered:.1f}s" if recovered is not None else "NOT within 120 s"
        print(f"  fault {kind} ({name}): caught up after {shown}", flush=True)

    async def run(self) -> dict[str, Any]:
        plain = self.bootstrap
        admin = AIOKafkaAdminClient(bootstrap_servers=plain)
        await admin.start()
        try:
            await admin.create_topics(
                [NewTopic("soak.readings", PARTITIONS, 1)]
                + [NewTopic(t, 1, 1) for t in ("soak.alerts", "soak.dlq", "soak.scores")]
            )
        finally:
            await admin.close()
        await asyncio.sleep(2)
        for name in ("a", "b"):
            self.start(name)
        stop = asyncio.Event()
        producing = asyncio.create_task(self.produce(stop))
        began = time.monotonic()
        end = began + self.args.minutes * 60
        n = 0
        while time.monotonic() + self.args.fault_every < end:
            await asyncio.sleep(self.args.fault_every)
            self.sample_rss()
            await self.fault(FAULTS[n % len(FAULTS)], n)
            n += 1
        await asyncio.sleep(max(0.0, end - time.monotonic()))
        stop.set()
        await producing
        final = await self.caught_up(time.monotonic(), limit=120)
        for proc in self.procs.values():
            proc.send_signal(signal.SIGTERM)
        codes = [await asyncio.to_thread(p.wait, 30) for p in self.procs.values()]
        return await self.audit(time.monotonic() - began, final, codes)

    async def read(self, topic: str) -> list[Any]:
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=self.bootstrap,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
        )
        await consumer.start()
        records: list[Any] = []
        try:
            while batch := await consumer.getmany(timeout_ms=2000):
                for part in batch.values():
                    records.extend(part)
        finally:
            await consumer.stop()
        return records

    async def audit(self, took: float, final: float | None, codes: list[int]) -> dict[str, Any]:
        scored: Counter[tuple[str, int]] = Counter()
        for r in await self.read("soak.scores"):
            doc = json.loads(r.value)
            scored.update((doc["asset"], t) for t in doc["ts"])
        expected = {
            (a, START_MS + 1000 * i) for a in self.assets for i in range(WINDOW - 1, self.steps)
        }
        ids = Counter(json.loads(r.value)["event_id"] for r in await self.read("soak.alerts"))
        dead = Counter(
            dict(r.headers).get("plantwatch.reason", b"?").decode()
            for r in await self.read("soak.dlq")
        )
        return {
            "seconds": took,
            "readings": self.steps * len(self.assets),
            "expected": len(expected),
            "missing": len(expected - set(scored)),
            "scored_twice": sum(1 for v in scored.values() if v > 1),
            "alert_events": sum(ids.values()),
            "duplicate_alerts": sum(1 for v in ids.values() if v > 1),
            "dead_letters": dict(dead),
            "final_catch_up_s": final,
            "exit_codes": codes,
            "peak_rss_mb": {k: v / 1024 for k, v in self.peak_rss.items()},
        }


def report(args: argparse.Namespace, result: dict[str, Any], events: list[dict[str, Any]]) -> str:
    short = args.minutes < 60
    ok = result["missing"] == 0 and result["duplicate_alerts"] == 0
    lines = [
        "# Reliability soak" + (" — SHORT RUN, not the 1-hour soak" if short else ""),
        "",
        f"Command: `python bench/soak.py {shlex.join(sys.argv[1:])}`".rstrip() + "  ",
        f"Machine: {cpu_model()}, {os.cpu_count()} cores, {platform.platform()}, "
        f"Python {platform.python_version()}  ",
        f"Load average at the end: {os.getloadavg()[0]:.1f}"
        + (f" — {args.note}" if args.note else ""),
        "",
        f"{args.minutes:g} min at {args.rate:g} readings/s ({args.assets} assets, 6 partitions, "
        f"2 serve instances, private broker), a fault every {args.fault_every:g} s.",
        "",
        f"**Verdict: {'PASS' if ok else 'FAIL'}** — {result['readings']:,} readings, "
        f"{result['expected']:,} windows expected, {result['missing']} never scored, "
        f"{result['scored_twice']} scored twice (replays after kills), "
        f"{result['alert_events']} alert events, {result['duplicate_alerts']} duplicated; "
        f"dead letters {result['dead_letters']}; exit codes {result['exit_codes']}; "
        f"final catch-up {result['final_catch_up_s'] or float('nan'):.1f}s; peak RSS (MB) "
        + ", ".join(f"{k}: {v:.0f}" for k, v in result["peak_rss_mb"].items()),
        "",
        "| # | fault | instance | caught up after (s) |",
        "|---:|---|---|---:|",
    ]
    for i, e in enumerate(events, 1):
        rec = f"{e['recovery_s']:.1f}" if e["recovery_s"] is not None else "> 120"
        lines.append(f"| {i} | {e['fault']} | {e['target']} | {rec} |")
    lines.append("")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--rate", type=float, default=500.0, help="readings/s (~50% capacity)")
    parser.add_argument("--assets", type=int, default=24)
    parser.add_argument("--fault-every", type=float, default=300.0, help="seconds")
    parser.add_argument("--outage", type=float, default=20.0, help="broker outage seconds")
    parser.add_argument("--bundle", type=Path)
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/reliability.md")
    parser.add_argument("--note", default="")
    args = parser.parse_args()
    lk = load_local_kafka()
    shared = lk.LocalKafka.from_env()
    work = Path(tempfile.mkdtemp(prefix="pw-soak-"))
    kafka_port, zk_port = free_ports(2)
    cluster = lk.LocalKafka(
        home=work / "kafka", kafka_port=kafka_port, zk_port=zk_port, dist_home=shared.home
    )
    try:
        cluster.start()
        bundle = args.bundle or train_sine_bundle(work)
        soak = Soak(args, cluster, bundle, work)
        print(f"soak: {args.minutes:g} min, broker {soak.bootstrap}, work dir {work}", flush=True)
        result = asyncio.run(soak.run())
        text = report(args, result, soak.events)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        print(text)
        return 0 if result["missing"] == 0 and result["duplicate_alerts"] == 0 else 1
    finally:
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
