#!/usr/bin/env python3
"""Soak test: serve under steady load with a fault every few minutes, then an audit.

    python bench/soak.py --rate auto                      # 1 hour, a fault every 5 minutes
    python bench/soak.py --minutes 4 --fault-every 60     # a short run

Runs on a *private* broker (its own home, data and ports, from the install made by
``deploy/local/kafka.py install``), so the shared one is never touched. Two ``serve`` instances
in one group consume a 6-partition topic. ``--rate N`` means N assets that each send one JSON
reading a second (timestamp = wall clock, the assets spread over the second), so the service's
own end-to-end latency histogram means what it says. ``--rate auto`` first measures the
capacity of this very configuration (same broker, message format, partitions and two
instances) and then runs the soak at ``--load`` (default 50 %) of it:

* a *flat-out* phase: the soak's producer sends readings as fast as it can for
  ``--capacity-seconds`` while a fresh group of two instances scores them; capacity is the
  rate the group scored (its committed offsets) over the phase after a warm-up — producer,
  broker and service share the same cores, as in the soak itself;
* then the producer stops and the time the group takes to drain what is left is reported as
  well (the pre-filled backlog rate, the group alone).

Faults, in turn:

* ``sigkill``: SIGKILL one instance, restart it 5 s later;
* ``sigterm``: SIGTERM one instance (graceful), restart it;
* ``broker``: stop the broker for ``--outage`` seconds, then restart it;
* ``bundle``: write a truncated manifest into the model directory, restore it 5 s later;
* ``flood``: one reading each of ``rate`` + 2,000 unknown new assets: more than either
  instance's ``windows.max_assets`` (``rate`` + 20) has room for, so some are admitted (and
  then fall silent) and the rest are dead-lettered.

Every minute each instance's RSS is sampled and its own ``/metrics`` scraped (fixed ports): the
delta of ``plantwatch_end_to_end_latency_seconds`` over the minute gives p50/p99 (interpolated
in the buckets; a negative delta or a new pid is a restart and counts from zero), plus windows
scored per second and consumer lag. The per-minute table and a flatness verdict computed from it
(rules stated in the report) go into the results file.

At the end the producer stops and the group catches up; the audit then checks that every
reading after each asset's first full window was scored (scores topic, read_committed), that no
alert event id appears twice, and reports each fault's recovery time (until the group has scored
what was produced up to 1 s after the fault), the exit codes and the instances' peak RSS.
Results go to ``bench/results/reliability.md``.
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
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine_info import cpu_model  # noqa: E402
from scaleout import group_settled, train_sine_bundle  # noqa: E402

from monitor import offsets  # noqa: E402

PARTITIONS = 6
START_MS = 1_767_225_600_000
WINDOW = 32  # the sine bundle's window
SLICES = 10  # the assets are spread over each second in this many slices
PLANTWATCH = str(Path(sys.executable).with_name("plantwatch"))
FAULTS = ("sigkill", "broker", "flood", "bundle", "sigterm")
E2E = "plantwatch_end_to_end_latency_seconds"
# Flatness rules (stated in the report).
RSS_GROWTH = 1.10
P99_GROWTH = 1.5
P99_FLOOR_S = 0.05


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


def reading(asset: str, step: int, ts: int | None = None, phase: int = 0) -> bytes:
    """One JSON reading; ``phase`` shifts the asset's pattern so alerts are spread in time."""
    stamp = START_MS + 1000 * step if ts is None else ts
    step += phase
    base = math.sin(2 * math.pi * step / 50.0)
    # Every third block of 50 steps is 40x off on one sensor: alerts open and resolve.
    scale = 40.0 if (step // 50) % 3 == 2 else 1.0
    values = {"a": base * scale, "b": 2 * base + 10, "c": math.cos(2 * math.pi * step / 50.0)}
    return json.dumps({"asset": asset, "ts": stamp, "values": values}).encode()


def child_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("PLANTWATCH_")}


def pythonpath(pid: int) -> str:
    """The PYTHONPATH a running process was started with (which tree it imports)."""
    with contextlib.suppress(OSError):
        for entry in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
            if entry.startswith(b"PYTHONPATH="):
                return entry.decode()
    return "no PYTHONPATH"


def rss_kb(pid: int) -> int | None:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return None


def scrape(port: int) -> dict[str, Any]:
    """The instance's own metrics: e2e buckets (cumulative), windows scored, readings, lag."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    buckets: dict[float, float] = {}
    out: dict[str, Any] = {"buckets": buckets, "scored": 0.0, "readings": 0.0, "lag": None}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == f"{E2E}_bucket":
                le = float(s.labels["le"])
                buckets[le] = buckets.get(le, 0.0) + s.value
            elif s.name == "plantwatch_windows_scored_total":
                out["scored"] += s.value
            elif s.name == "plantwatch_readings_total":
                out["readings"] += s.value
            elif s.name == "plantwatch_consumer_lag_records":
                out["lag"] = (out["lag"] or 0.0) + s.value
    return out


def quantile(buckets: dict[float, float], q: float) -> float | None:
    """``q`` of a histogram's cumulative buckets, interpolated linearly within a bucket."""
    bounds = sorted(buckets)
    total = buckets.get(math.inf, 0.0)
    if total <= 0:
        return None
    target = q * total
    prev_bound, prev_count = 0.0, 0.0
    for b in bounds:
        count = buckets[b]
        if count >= target:
            if math.isinf(b):
                return math.inf
            if count == prev_count:
                return b
            return prev_bound + (b - prev_bound) * (target - prev_count) / (count - prev_count)
        prev_bound, prev_count = b, count
    return math.inf


def git_info() -> str:
    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True)
        return done.stdout.strip()

    head = git("rev-parse", "HEAD")
    dirty = git("status", "--porcelain", "--", "monitor", "training", "bench/soak.py")
    return head + (" (with uncommitted changes in monitor/training/soak.py)" if dirty else "")


class Soak:
    def __init__(
        self, args: argparse.Namespace, cluster: Any, bundle: Path, work: Path, ports: list[int]
    ) -> None:
        self.args, self.cluster, self.work = args, cluster, work
        self.bootstrap = cluster.listener("PLAINTEXT")
        self.model_dir = work / "model"
        shutil.copytree(bundle, self.model_dir)
        self.bundle = bundle
        self.ports = {"a": ports[0], "b": ports[1]}
        self.rate = 0  # set by run(): assets at 1 Hz
        self.assets: list[str] = []
        self.t0_ms = 0
        self.steps = 0
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.peak_rss: dict[str, int] = {}
        self.events: list[dict[str, Any]] = []
        self.minutes: list[dict[str, Any]] = []
        self.capacity: dict[str, Any] = {}
        self.began = 0.0
        self.final_offsets: list[dict[str, int]] = []
        # Per instance: (pid, last scrape), and what it counted after that before it was stopped.
        self.scraped: dict[str, tuple[int, dict[str, Any]]] = {}
        self.carry: dict[str, tuple[dict[float, float], float]] = {}
        self.tps = [TopicPartition("soak.readings", p) for p in range(PARTITIONS)]
        self.doc: dict[str, Any] = {
            "kafka": {"bootstrap_servers": self.bootstrap, "transaction_timeout_ms": 15_000},
            "input": {
                "topics": ["soak.readings"],
                "group_id": "soak",
                "dead_letter_topic": "soak.dlq",
                **(
                    {}
                    if args.commit_interval is None
                    else {"commit_interval_ms": args.commit_interval}
                ),
            },
            "model": {"path": str(self.model_dir), "device": "cpu", "workers": 1, "threads": 1},
            "windows": {"max_assets": 20},
            "detector": {"k": 3, "n": 5, "m": 5},
            "alerts": {"topic": "soak.alerts"},
            "scores": {"topic": "soak.scores"},
            "delivery": {"enabled": False},
            "http": {"host": "127.0.0.1", "port": 0},
            "shutdown_deadline_s": 15,
        }

    def offset_ms(self, index: int) -> int:
        """Where in each second asset ``index`` sends (its slice of the second)."""
        return (index % SLICES) * (1000 // SLICES)

    def start(self, name: str, doc: dict[str, Any] | None = None) -> subprocess.Popen[bytes]:
        config = self.work / f"{name}.yaml"
        port = self.ports.get(name, 0)
        body = {
            **(doc or self.doc),
            "instance_id": name,
            "http": {"host": "127.0.0.1", "port": port},
        }
        config.write_text(yaml.safe_dump(body))
        with (self.work / f"{name}.log").open("ab") as log:
            proc = subprocess.Popen(
                [PLANTWATCH, "--log-format", "json", "serve", "--config", str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=child_env(),
            )
        self.procs[name] = proc
        return proc

    def sample_rss(self) -> None:
        for name, proc in self.procs.items():
            kb = rss_kb(proc.pid)
            if kb is not None:
                self.peak_rss[name] = max(self.peak_rss.get(name, 0), kb)

    async def send_all(
        self, producer: AIOKafkaProducer, topic: str, items: list[tuple[str, bytes]]
    ) -> None:
        """Send and wait for every item; what fails (broker outage) is sent again, in order."""
        while items:
            futures: list[Any] = []
            for key, value in items:
                try:
                    futures.append(await producer.send(topic, value, key=key.encode()))
                except Exception as exc:  # refused during an outage: sent again
                    futures.append(exc)
            results = await asyncio.gather(
                *(f for f in futures if not isinstance(f, Exception)), return_exceptions=True
            )
            it = iter(results)
            outcome = [f if isinstance(f, Exception) else next(it) for f in futures]
            failed = [i for i, r in zip(items, outcome, strict=True) if isinstance(r, Exception)]
            if failed:
                print(f"  producer: {len(failed)} sends failed, retrying", flush=True)
                await asyncio.sleep(1.0)
            items = failed

    async def produce(self, stop: asyncio.Event) -> None:
        """``rate`` assets at 1 Hz, spread over each second; retried through broker outages."""
        slices = [
            [(i, a) for i, a in enumerate(self.assets) if i % SLICES == s] for s in range(SLICES)
        ]
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap, acks="all", enable_idempotence=True, linger_ms=5
        )
        await producer.start()
        try:
            t0 = time.monotonic()
            while not stop.is_set():
                step = self.steps
                for s, members in enumerate(slices):
                    due = t0 + step + s / SLICES
                    await asyncio.sleep(max(0.0, due - time.monotonic()))
                    base = self.t0_ms + 1000 * step
                    items = [
                        (a, reading(a, step, base + self.offset_ms(i), phase=i % 150))
                        for i, a in members
                    ]
                    await self.send_all(producer, "soak.readings", items)
                self.steps += 1
        finally:
            await producer.stop()

    async def committed_through(self, group: str, tps: list[TopicPartition]) -> dict[Any, int]:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        try:
            committed = await admin.list_consumer_group_offsets(group, partitions=tps)
        finally:
            await admin.close()
        out = {}
        for tp in tps:
            meta = committed.get(tp)
            state = offsets.decode(meta.metadata if meta is not None else None)
            out[tp] = state.scored_through if state is not None else -1
        return out

    async def offsets_now(self) -> list[dict[str, int]]:
        """Per partition: the committed offset (where a new owner starts reading), the offset
        scored through (from the commit metadata) and the end."""
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        try:
            committed = await admin.list_consumer_group_offsets("soak", partitions=self.tps)
        finally:
            await admin.close()
        ends = await self.ends()
        out = []
        for tp in self.tps:
            meta = committed.get(tp)
            state = offsets.decode(meta.metadata if meta is not None else None)
            out.append(
                {
                    "partition": tp.partition,
                    "committed": meta.offset if meta is not None else -1,
                    "scored_through": state.scored_through if state is not None else -1,
                    "end": ends[tp],
                }
            )
        return out

    async def scored_through(self) -> dict[TopicPartition, int]:
        return await self.committed_through("soak", self.tps)

    async def ends(self, tps: list[TopicPartition] | None = None) -> dict[TopicPartition, int]:
        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap)
        await consumer.start()
        try:
            ends: dict[TopicPartition, int] = await consumer.end_offsets(tps or self.tps)
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

    async def measure_capacity(self) -> dict[str, Any]:
        """Flat-out readings into a fresh group of two instances on a separate topic."""
        args = self.args
        topic = "cap.readings"
        assets = [f"cap-{i:04d}" for i in range(args.capacity_assets)]
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        try:
            await admin.create_topics(
                [NewTopic(topic, PARTITIONS, 1)]
                + [NewTopic(t, 1, 1) for t in ("cap.alerts", "cap.dlq", "cap.scores")]
            )
        finally:
            await admin.close()
        doc = {
            **self.doc,
            "input": {
                **self.doc["input"],
                "topics": [topic],
                "group_id": "cap",
                "dead_letter_topic": "cap.dlq",
            },
            "windows": {"max_assets": len(assets) + 20},
            "alerts": {"topic": "cap.alerts"},
            "scores": {"topic": "cap.scores"},
        }
        procs = [self.start(name, doc) for name in ("cap-a", "cap-b")]
        logs = [self.work / f"{name}.log" for name in ("cap-a", "cap-b")]
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        await group_settled(logs, poll_s=0.5)

        async def scored() -> int:
            through = await self.committed_through("cap", tps)
            return sum(v + 1 for v in through.values())

        load_before = os.getloadavg()
        stop = asyncio.Event()
        produced = 0

        async def flat_out() -> None:
            nonlocal produced
            producer = AIOKafkaProducer(
                bootstrap_servers=self.bootstrap, acks="all", enable_idempotence=True, linger_ms=5
            )
            await producer.start()
            try:
                step = 0
                while not stop.is_set():
                    items = [(a, reading(a, step, phase=i % 150)) for i, a in enumerate(assets)]
                    await self.send_all(producer, topic, items)
                    produced += len(items)
                    step += 1
            finally:
                await producer.stop()

        began = time.monotonic()
        task = asyncio.create_task(flat_out())
        await asyncio.sleep(args.capacity_warmup)
        t1, s1 = time.monotonic(), await scored()
        await asyncio.sleep(args.capacity_seconds - args.capacity_warmup)
        t2, s2 = time.monotonic(), await scored()
        produced_at_t2 = produced
        stop.set()
        await task
        produce_seconds = time.monotonic() - began
        ends = await self.ends(tps)
        backlog = sum(ends.values()) - s2
        t3 = time.monotonic()
        while True:
            through = await self.committed_through("cap", tps)
            if all(through[tp] >= e - 1 for tp, e in ends.items() if e > 0):
                break
            if time.monotonic() - t3 > 300:
                raise RuntimeError("capacity phase: the group did not drain its backlog in 300 s")
            await asyncio.sleep(0.2)
        drain_s = time.monotonic() - t3
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        codes = [await asyncio.to_thread(p.wait, 30) for p in procs]
        for name in ("cap-a", "cap-b"):
            del self.procs[name]
        return {
            "assets": len(assets),
            "seconds": t2 - t1,
            "warmup": args.capacity_warmup,
            "scored_rate": (s2 - s1) / (t2 - t1),
            "produced_rate": produced_at_t2 / (t2 - began),
            "produced": produced,
            "produce_seconds": produce_seconds,
            "backlog_at_stop": backlog,
            "drain_s": drain_s,
            "drain_rate": backlog / drain_s if drain_s > 0 else math.nan,
            "load_before": load_before,
            "load_after": os.getloadavg(),
            "exit_codes": codes,
        }

    async def last_scrape(self, name: str) -> None:
        """Scrape an instance about to be stopped, so its counts since the last sample count."""
        before = self.scraped.get(name)
        pid = self.procs[name].pid
        if before is None or before[0] != pid:
            return
        try:
            now = await asyncio.to_thread(scrape, self.ports[name])
        except Exception:
            return
        old = before[1]
        if now["scored"] < old["scored"]:
            return
        buckets = {b: v - old["buckets"].get(b, 0.0) for b, v in now["buckets"].items()}
        cb, cs = self.carry.get(name, ({}, 0.0))
        for b, v in buckets.items():
            cb[b] = cb.get(b, 0.0) + v
        self.carry[name] = (cb, cs + now["scored"] - old["scored"])
        self.scraped[name] = (pid, now)

    async def fault(self, kind: str, n: int) -> None:
        name = ("a", "b")[n % 2]
        at = time.monotonic()
        if kind in ("sigkill", "sigterm"):
            await self.last_scrape(name)
        if kind == "sigkill":
            self.procs[name].send_signal(signal.SIGKILL)
            self.procs[name].wait(10)
            await asyncio.sleep(5)
            self.start(name)
        elif kind == "sigterm":
            self.procs[name].send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(self.procs[name].wait, 30)
            if code != 0:
                print(f"  sigterm: {name} exited with {code}", flush=True)
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
                    for i in range(self.rate + 2000)
                ]
                await asyncio.gather(*futures)
        recovered = await self.caught_up(at, limit=120)
        self.events.append(
            {"fault": kind, "target": name, "at_s": at - self.began, "recovery_s": recovered}
        )
        shown = f"{recovered:.1f}s" if recovered is not None else "NOT within 120 s"
        print(f"  fault {kind} ({name}): caught up after {shown}", flush=True)

    async def sampler(self) -> None:
        """Once a minute: RSS and a scrape of each instance's /metrics (deltas over the minute)."""
        prev = self.scraped
        minute = 0
        while True:
            minute += 1
            await asyncio.sleep(max(0.0, self.began + 60 * minute - time.monotonic()))
            row: dict[str, Any] = {"minute": minute, "load1": os.getloadavg()[0], "inst": {}}
            merged: dict[float, float] = {}
            scored = 0.0
            lag: float | None = None
            for name in ("a", "b"):
                proc = self.procs[name]
                cell: dict[str, Any] = {"pid": proc.pid, "rss_mb": None, "up": False}
                kb = rss_kb(proc.pid) if proc.poll() is None else None
                if kb is not None:
                    cell["rss_mb"] = kb / 1024
                    self.peak_rss[name] = max(self.peak_rss.get(name, 0), kb)
                try:
                    now = await asyncio.to_thread(scrape, self.ports[name])
                except Exception as exc:  # down (being restarted) or not listening yet
                    cell["error"] = type(exc).__name__
                    row["inst"][name] = cell
                    continue
                cell["up"] = True
                before = prev.get(name)
                reset = before is None or before[0] != proc.pid
                if not reset:
                    assert before is not None
                    old = before[1]
                    if now["scored"] < old["scored"] or any(
                        now["buckets"].get(b, 0.0) < v for b, v in old["buckets"].items()
                    ):
                        reset = True
                if reset:
                    # A new process (or reset counters) counts from zero: all it has is new.
                    cell["restarted"] = before is not None
                    d_buckets, d_scored = dict(now["buckets"]), now["scored"]
                else:
                    assert before is not None
                    old = before[1]
                    d_buckets = {
                        b: v - old["buckets"].get(b, 0.0) for b, v in now["buckets"].items()
                    }
                    d_scored = now["scored"] - old["scored"]
                prev[name] = (proc.pid, now)
                carried_buckets, carried_scored = self.carry.pop(name, ({}, 0.0))
                for b, v in carried_buckets.items():
                    d_buckets[b] = d_buckets.get(b, 0.0) + v
                d_scored += carried_scored
                for b, v in d_buckets.items():
                    merged[b] = merged.get(b, 0.0) + v
                scored += d_scored
                if now["lag"] is not None:
                    lag = (lag or 0.0) + now["lag"]
                cell["p99"] = quantile(d_buckets, 0.99)
                row["inst"][name] = cell
            row["scored_per_s"] = scored / 60.0
            row["lag"] = lag
            row["p50"] = quantile(merged, 0.50)
            row["p99"] = quantile(merged, 0.99)
            row["observations"] = merged.get(math.inf, 0.0)
            self.minutes.append(row)
            rss = ", ".join(
                f"{k}={c['rss_mb']:.0f}MB" if c["rss_mb"] is not None else f"{k}=down"
                for k, c in row["inst"].items()
            )
            print(
                f"  min {minute}: {rss}, scored {row['scored_per_s']:,.0f}/s, "
                f"p50 {fmt_s(row['p50'])}, p99 {fmt_s(row['p99'])}, lag {row['lag']}, "
                f"load {row['load1']:.2f}",
                flush=True,
            )

    def check_import(self) -> str:
        """Which monitor package a serve child imports (the frozen tree, not a live checkout)."""
        done = subprocess.run(
            [
                str(Path(PLANTWATCH).with_name("python")),
                "-c",
                "import monitor; print(monitor.__file__)",
            ],
            capture_output=True,
            text=True,
            env=child_env(),
            check=True,
        )
        return done.stdout.strip()

    async def run(self) -> dict[str, Any]:
        self.imports = self.check_import()
        print(f"soak: serve children import monitor from {self.imports}", flush=True)
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        try:
            await admin.create_topics(
                [NewTopic("soak.readings", PARTITIONS, 1)]
                + [NewTopic(t, 1, 1) for t in ("soak.alerts", "soak.dlq", "soak.scores")]
            )
        finally:
            await admin.close()
        if self.args.rate == "auto":
            self.capacity = await self.measure_capacity()
            c = self.capacity
            print(
                f"soak: capacity {c['scored_rate']:,.0f} readings/s scored flat out "
                f"(producer {c['produced_rate']:,.0f}/s; backlog of {c['backlog_at_stop']:,} "
                f"drained at {c['drain_rate']:,.0f}/s); load {c['load_before'][0]:.2f}",
                flush=True,
            )
            self.rate = max(1, int(c["scored_rate"] * self.args.load))
        else:
            self.rate = int(self.args.rate)
        self.assets = [f"unit-{i:05d}" for i in range(self.rate)]
        self.doc["windows"] = {"max_assets": self.rate + 20}
        print(f"soak: {self.rate:,} assets at 1 Hz = {self.rate:,} readings/s", flush=True)
        await asyncio.sleep(2)
        for name in ("a", "b"):
            self.start(name)
        pids = {name: p.pid for name, p in self.procs.items()}
        print(f"soak: instances {pids} on ports {self.ports}", flush=True)
        for name, pid in pids.items():
            print(f"soak: {name} (pid {pid}) runs with {pythonpath(pid)}", flush=True)
        stop = asyncio.Event()
        self.t0_ms = (int(time.time() * 1000) // 1000 + 1) * 1000
        producing = asyncio.create_task(self.produce(stop))
        self.began = time.monotonic()
        sampling = asyncio.create_task(self.sampler())
        end = self.began + self.args.minutes * 60
        n = 0
        every = self.args.fault_every
        while self.began + (n + 1) * every < end - 60:
            await asyncio.sleep(max(0.0, self.began + (n + 1) * every - time.monotonic()))
            self.sample_rss()
            await self.fault(FAULTS[n % len(FAULTS)], n)
            n += 1
        await asyncio.sleep(max(0.0, end - time.monotonic()))
        stop.set()
        await producing
        final = await self.caught_up(time.monotonic(), limit=120)
        self.final_offsets = await self.offsets_now()
        await asyncio.sleep(
            max(0.0, self.began + 60 * (len(self.minutes) + 1) - time.monotonic() + 1)
        )
        sampling.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampling
        for proc in self.procs.values():
            proc.send_signal(signal.SIGTERM)
        codes = {k: await asyncio.to_thread(p.wait, 30) for k, p in self.procs.items()}
        return await self.audit(time.monotonic() - self.began, final, codes)

    async def read(self, topic: str, each: Callable[[Any], None]) -> int:
        """Every committed record of ``topic``, streamed into ``each`` (no list in memory)."""
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=self.bootstrap,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            max_partition_fetch_bytes=4 * 1024 * 1024,
        )
        await consumer.start()
        n = 0
        try:
            while batch := await consumer.getmany(timeout_ms=3000, max_records=20_000):
                for part in batch.values():
                    for r in part:
                        each(r)
                    n += len(part)
        finally:
            await consumer.stop()
        return n

    async def audit(
        self, took: float, final: float | None, codes: dict[str, int]
    ) -> dict[str, Any]:
        index = {a: i for i, a in enumerate(self.assets)}
        # One counter per asset and step (saturating at 255): scored once, twice, never.
        seen = [bytearray(self.steps) for _ in self.assets]
        stray = 0

        def on_score(r: Any) -> None:
            nonlocal stray
            doc = json.loads(r.value)
            i = index.get(doc["asset"])
            if i is None:
                stray += 1  # flood assets (never admitted) or capacity topic: not expected
                return
            row, off = seen[i], self.t0_ms + self.offset_ms(i)
            for t in doc["ts"]:
                step, rem = divmod(t - off, 1000)
                if rem or not 0 <= step < self.steps:
                    stray += 1
                elif row[step] < 255:
                    row[step] += 1

        score_messages = await self.read("soak.scores", on_score)
        first = WINDOW - 1
        missing_by_asset: dict[str, int] = {}
        twice = 0
        holes = 0  # never scored although a later reading of the same asset was
        for a, row in zip(self.assets, seen, strict=True):
            tail = row[first:]
            gaps = tail.count(0)
            if gaps:
                missing_by_asset[a] = gaps
                last = max((k for k, v in enumerate(tail) if v), default=-1)
                holes += tail[: last + 1].count(0)
            twice += len(tail) - gaps - tail.count(1)
        expected = len(self.assets) * max(0, self.steps - first)
        missing_examples = []
        for a, gaps in list(missing_by_asset.items())[:5]:
            row = seen[index[a]]
            steps = [s for s in range(first, self.steps) if row[s] == 0][:10]
            missing_examples.append({"asset": a, "missing": gaps, "first_steps": steps})
        ids: Counter[str] = Counter()
        await self.read("soak.alerts", lambda r: ids.update([json.loads(r.value)["event_id"]]))
        dead: Counter[str] = Counter()
        await self.read(
            "soak.dlq",
            lambda r: dead.update([dict(r.headers).get("plantwatch.reason", b"?").decode()]),
        )
        return {
            "seconds": took,
            "rate": self.rate,
            "readings": self.steps * len(self.assets),
            "steps": self.steps,
            "score_messages": score_messages,
            "stray_scores": stray,
            "expected": expected,
            "missing": sum(missing_by_asset.values()),
            "missing_assets": len(missing_by_asset),
            "missing_holes": holes,
            "missing_examples": missing_examples,
            "scored_twice": twice,
            "alert_events": sum(ids.values()),
            "duplicate_alerts": sum(1 for v in ids.values() if v > 1),
            "dead_letters": dict(dead),
            "final_catch_up_s": final,
            "exit_codes": codes,
            "peak_rss_mb": {k: v / 1024 for k, v in self.peak_rss.items() if k in ("a", "b")},
        }


def fmt_s(v: float | None) -> str:
    if v is None:
        return "–"
    if math.isinf(v):
        return "> 60 s"
    return f"{v * 1000:.0f} ms" if v < 1 else f"{v:.2f} s"


def fault_minutes(events: list[dict[str, Any]]) -> dict[int, str]:
    """Minute (1-based, the minute that ends at 60·m s) → what faults touched it."""
    out: dict[int, list[str]] = {}
    for e in events:
        start = e["at_s"]
        first = int(start // 60) + 1
        out.setdefault(first, []).append(f"**{e['fault']}** ({e['target']})")
        rec = e["recovery_s"] if e["recovery_s"] is not None else 120.0
        last = int((start + rec) // 60) + 1
        for m in range(first + 1, last + 1):
            out.setdefault(m, []).append(f"recovering from {e['fault']}")
    return {m: "; ".join(v) for m, v in out.items()}


def flatness(minutes: list[dict[str, Any]], faulted: set[int]) -> tuple[list[str], bool | None]:
    """The verdict lines and whether memory and latency are flat (None: run too short)."""
    total = len(minutes)
    if total < 30:
        return [f"Flatness: not judged ({total} minutes; the rule needs at least 30)."], None
    lines, ok = [], True
    early = [m for m in minutes if 5 <= m["minute"] <= 15]
    late = [m for m in minutes if m["minute"] > total - 10]
    for name in ("a", "b"):
        e = [m["inst"][name]["rss_mb"] for m in early if m["inst"][name]["rss_mb"] is not None]
        lt = [m["inst"][name]["rss_mb"] for m in late if m["inst"][name]["rss_mb"] is not None]
        if not e or not lt:
            lines.append(f"- RSS {name}: not enough samples")
            ok = False
            continue
        em, lm = statistics.median(e), statistics.median(lt)
        flat = lm <= RSS_GROWTH * em
        ok &= flat
        lines.append(
            f"- RSS {name}: median {em:.0f} MB in minutes 5–15, {lm:.0f} MB in the last 10 "
            f"(max {max(e):.0f} / {max(lt):.0f} MB) → {'flat' if flat else 'GROWS'}"
        )
    clean = [m for m in minutes if m["minute"] not in faulted and m["p99"] is not None]
    e99 = [m["p99"] for m in clean if 5 <= m["minute"] <= 20]
    l99 = [m["p99"] for m in clean if m["minute"] > total - 20]
    if e99 and l99:
        em, lm = statistics.median(e99), statistics.median(l99)
        flat = lm <= max(P99_GROWTH * em, P99_FLOOR_S)
        ok &= flat
        lines.append(
            f"- p99 latency, fault-free minutes: median {fmt_s(em)} in minutes 5–20 "
            f"({len(e99)} minutes), {fmt_s(lm)} in the last 20 ({len(l99)} minutes) → "
            f"{'flat' if flat else 'GROWS'}"
        )
    else:
        lines.append("- p99 latency: no fault-free minutes to compare")
        ok = False
    return lines, ok


def report(args: argparse.Namespace, result: dict[str, Any], soak: Soak, machine_note: str) -> str:
    short = args.minutes < 60
    events = soak.events
    crashed = {k: c for k, c in result["exit_codes"].items() if c != 0}
    audit_ok = result["missing"] == 0 and result["duplicate_alerts"] == 0 and not crashed
    faulted_text = fault_minutes(events)
    flat_lines, flat_ok = flatness(soak.minutes, set(faulted_text))
    verdict = audit_ok and flat_ok is not False
    cmd = f"python bench/soak.py {shlex.join(sys.argv[1:])}".rstrip()
    loads = [m["load1"] for m in soak.minutes]
    lines = [
        "# Reliability soak" + (" — SHORT RUN, not the 1-hour soak" if short else ""),
        "",
        f"Command: `{cmd}`  ",
        f"Commit: `{git_info()}`; serve children imported `{soak.imports}`  ",
        f"Machine: {cpu_model()}, {os.cpu_count()} cores, {platform.platform()}, "
        f"Python {platform.python_version()}  ",
        "Load average (1 min) during the soak: "
        + (
            f"min {min(loads):.2f}, median {statistics.median(loads):.2f}, max {max(loads):.2f}"
            if loads
            else "–"
        )
        + f"; at the end {os.getloadavg()[0]:.2f}"
        + (f" — {machine_note}" if machine_note else ""),
        "",
    ]
    cap = soak.capacity
    if cap:
        lines += [
            "## Capacity (measured at the start of this run)",
            "",
            f"Same private broker, JSON single-reading messages of the same format, a "
            f"{PARTITIONS}-partition topic, two `serve` instances in a fresh group (same settings, "
            f"scores and alerts topics on), {cap['assets']:,} assets. The soak's producer sent "
            f"readings flat out for {cap['produce_seconds']:.0f} s (it shares the 2 cores with "
            f"the broker and both instances, as during the soak); capacity = readings the group "
            f"scored (committed offsets) per second over {cap['seconds']:.0f} s after a "
            f"{cap['warmup']:g} s warm-up.",
            "",
            f"- **capacity: {cap['scored_rate']:,.0f} readings/s** scored; producer managed "
            f"{cap['produced_rate']:,.0f}/s "
            + (
                "(the group kept up with the producer: the figure is bounded by the producer "
                "sharing the cores)"
                if cap["backlog_at_stop"] < 0.05 * cap["produced"]
                else "(the group fell behind: the figure is the group's rate)"
            ),
            f"- backlog when the producer stopped: {cap['backlog_at_stop']:,} readings, drained "
            f"by the group alone in {cap['drain_s']:.1f} s = {cap['drain_rate']:,.0f} readings/s "
            "(pre-filled backlog rate, large batches; not used for the soak rate)",
            f"- load average before / after: {cap['load_before'][0]:.2f} / "
            f"{cap['load_after'][0]:.2f}; capacity instances exit codes {cap['exit_codes']}",
            f"- soak rate = {args.load:.0%} of capacity = **{result['rate']:,} readings/s**",
            "",
        ]
    lines += [
        "## Run",
        "",
        f"{args.minutes:g} min at {result['rate']:,} readings/s ({result['rate']:,} assets, "
        f"each one JSON reading a second, wall-clock timestamps spread over the second; "
        f"{PARTITIONS} partitions, 2 serve instances, private broker), a fault every "
        f"{args.fault_every:g} s (broker outage {args.outage:g} s).",
        "",
        f"**Verdict: {'PASS' if verdict else 'FAIL'}** (audit {'PASS' if audit_ok else 'FAIL'}, "
        f"flatness {'PASS' if flat_ok else 'not judged' if flat_ok is None else 'FAIL'})",
        "",
        f"- {result['readings']:,} readings ({result['steps']:,} seconds × "
        f"{result['rate']:,} assets); {result['expected']:,} windows expected (every reading "
        f"after each asset's first full window); **{result['missing']:,} never scored** "
        f"({result['missing_assets']} assets); {result['scored_twice']:,} scored twice "
        f"(replays after kills); {result['stray_scores']:,} score entries of unknown assets/ts",
        f"- {result['alert_events']:,} alert events, **{result['duplicate_alerts']} duplicated "
        f"event ids**; dead letters {result['dead_letters']}",
        f"- exit codes at the end {result['exit_codes']}; final catch-up "
        f"{result['final_catch_up_s'] or float('nan'):.1f} s; peak RSS (MB) "
        + ", ".join(f"{k}: {v:.0f}" for k, v in result["peak_rss_mb"].items()),
    ]
    if result["missing"]:
        lines.append(
            f"- of the never scored: {result['missing_holes']:,} are holes (a later reading of "
            f"the same asset was scored), {result['missing'] - result['missing_holes']:,} the "
            "tail of their asset (not yet scored when the run stopped)"
        )
    if result["missing_examples"]:
        lines.append(f"- never scored, examples: {result['missing_examples']}")
    if soak.final_offsets:
        lines += [
            "",
            "Offsets at the end (after the final catch-up): `committed` is where a new owner "
            "starts reading after a restart or rebalance (the oldest reading a window still "
            "needs), `scored through` from the commit metadata.",
            "",
            "| partition | committed | scored through | end | end − committed |",
            "|---:|---:|---:|---:|---:|",
        ]
        for o in soak.final_offsets:
            lines.append(
                f"| {o['partition']} | {o['committed']:,} | {o['scored_through']:,} | "
                f"{o['end']:,} | {o['end'] - o['committed']:,} |"
            )
    lines += [
        "",
        "| # | at (s) | fault | instance | caught up after (s) |",
        "|---:|---:|---|---|---:|",
    ]
    for i, e in enumerate(events, 1):
        rec = f"{e['recovery_s']:.1f}" if e["recovery_s"] is not None else "> 120"
        lines.append(f"| {i} | {e['at_s']:.0f} | {e['fault']} | {e['target']} | {rec} |")
    lines += [
        "",
        "## Flatness",
        "",
        "Rules: memory is flat if, per instance, the median RSS over the last 10 minutes is at "
        f"most {RSS_GROWTH:.2f}× the median over minutes 5–15 (after warm-up). Latency is flat "
        "if the median of the per-minute p99 over fault-free minutes in the last 20 minutes "
        f"is at most {P99_GROWTH:g}× (or {P99_FLOOR_S * 1000:.0f} ms, whichever is larger) the "
        "same over fault-free minutes 5–20. A minute is not fault-free if a fault began in it "
        "or its recovery (as in the table above; 120 s if it did not recover) reached into it. "
        "Note that a killed/terminated instance restarts with a fresh RSS.",
        "",
        *flat_lines,
        "",
        "## Per minute",
        "",
        "Each row covers the minute ending at that time. RSS from /proc; latency = reading "
        "timestamp → window scored, from the delta of both instances' "
        f"`{E2E}` histograms over the minute, interpolated in its buckets (bounds "
        "5 ms … 60 s); `scored/s` from `plantwatch_windows_scored_total`; lag = sum of "
        "`plantwatch_consumer_lag_records`. `*` = first scrape of a restarted process (its "
        "counters count from zero; the old one was scraped just before it was stopped), "
        "`down` = not running / not answering.",
        "",
        "| min | RSS a (MB) | RSS b (MB) | scored/s | p50 | p99 | lag | load | fault |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for m in soak.minutes:
        cells = []
        for name in ("a", "b"):
            c = m["inst"][name]
            if c["rss_mb"] is None:
                cells.append("down")
            else:
                mark = "*" if c.get("restarted") else ""
                mark += "" if c["up"] else " (no /metrics)"
                cells.append(f"{c['rss_mb']:.0f}{mark}")
        lag = f"{m['lag']:,.0f}" if m["lag"] is not None else "–"
        lines.append(
            f"| {m['minute']} | {cells[0]} | {cells[1]} | {m['scored_per_s']:,.0f} | "
            f"{fmt_s(m['p50'])} | {fmt_s(m['p99'])} | {lag} | {m['load1']:.2f} | "
            f"{faulted_text.get(m['minute'], '')} |"
        )
    lines.append("")
    return "\n".join(lines)


def rate_arg(text: str) -> str | float:
    return "auto" if text == "auto" else float(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument(
        "--rate",
        type=rate_arg,
        default="auto",
        help="readings/s (= assets at 1 Hz), or 'auto': --load of the capacity measured first",
    )
    parser.add_argument("--load", type=float, default=0.5, help="share of capacity for auto")
    parser.add_argument("--capacity-seconds", type=float, default=45.0)
    parser.add_argument("--capacity-warmup", type=float, default=15.0)
    parser.add_argument("--capacity-assets", type=int, default=1000)
    parser.add_argument("--fault-every", type=float, default=300.0, help="seconds")
    parser.add_argument("--outage", type=float, default=20.0, help="broker outage seconds")
    parser.add_argument(
        "--commit-interval",
        type=int,
        help="the instances' input.commit_interval_ms (default: the service's own; 0: one "
        "transaction per batch)",
    )
    parser.add_argument("--bundle", type=Path)
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/reliability.md")
    parser.add_argument("--note", default="")
    args = parser.parse_args()
    lk = load_local_kafka()
    shared = lk.LocalKafka.from_env()
    work = Path(tempfile.mkdtemp(prefix="pw-soak-"))
    kafka_port, zk_port, port_a, port_b = free_ports(4)
    cluster = lk.LocalKafka(
        home=work / "kafka", kafka_port=kafka_port, zk_port=zk_port, dist_home=shared.home
    )
    try:
        cluster.start()
        bundle = args.bundle or train_sine_bundle(work)
        soak = Soak(args, cluster, bundle, work, [port_a, port_b])
        print(f"soak: {args.minutes:g} min, broker {soak.bootstrap}, work dir {work}", flush=True)
        result = asyncio.run(soak.run())
        text = report(args, result, soak, args.note)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        print(text)
        ok = result["missing"] == 0 and result["duplicate_alerts"] == 0
        return 0 if ok and not any(result["exit_codes"].values()) else 1
    finally:
        cluster.stop()
        if os.environ.get("PW_SOAK_KEEP"):
            print(f"soak: kept {work}", flush=True)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
