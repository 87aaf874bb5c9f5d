"""The streaming half of ``make demo``: serve + a webhook receiver + a simulated faulty plant.

Run by ``make demo`` after it has trained a bundle per kind of machine (pumps, compressors) on
the simulated plant's normal data and started the local Kafka broker. It:

1. starts a webhook receiver on 127.0.0.1 that verifies each request's HMAC signature and prints
   the alert it carries;
2. starts one ``plantwatch serve`` (a real process) with a route per bundle: the first bundle
   is ``model.path`` for the assets of its kind (``input.asset_patterns``), each other one a
   ``routes`` entry for its kind; with delivery to that receiver;
3. streams a later period of the same plant, with one injected fault of every kind, to Kafka;
4. waits until everything is scored and delivered, prints the alerts next to the faults that
   were injected and where the metrics are, and stops serve with SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import yaml
from aiohttp import ClientSession, web
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from monitor.sinks.webhook import (
    IDEMPOTENCY_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    verify_signature,
)
from training.simulator import FAULT_KINDS, PlantConfig, PlantSimulator, produce

SECRET = "demo-secret"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Receiver:
    """A webhook endpoint that checks signatures and prints each alert once."""

    def __init__(self) -> None:
        self.events: dict[str, dict[str, Any]] = {}
        self.bad_signatures = 0

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        ok = verify_signature(
            SECRET,
            request.headers.get(TIMESTAMP_HEADER, ""),
            body,
            request.headers.get(SIGNATURE_HEADER, ""),
        )
        if not ok:
            self.bad_signatures += 1
            return web.Response(status=401)
        key = request.headers[IDEMPOTENCY_HEADER]
        if key not in self.events:  # receivers de-duplicate by idempotency key
            event = json.loads(body)
            self.events[key] = event
            top = ", ".join(f"{s['sensor']} {s['share']:.0%}" for s in event["top_sensors"])
            print(
                f"  webhook <- {event['event']:<8} {event['asset']:<14} {event['severity']:<8} "
                f"peak/threshold {event['peak_score'] / event['threshold']:5.1f}  top: {top}",
                flush=True,
            )
        return web.Response(status=204)


async def main(args: argparse.Namespace) -> int:
    run = uuid.uuid4().hex[:6]
    # Every topic serve needs, its own per run (the broker does not create topics).
    names = ("readings", "alerts", "dead-letter", "delivery-dead-letter")
    topics = {name: f"demo.{name}.{run}" for name in names}
    admin = AIOKafkaAdminClient(bootstrap_servers=args.bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [
                NewTopic(t, num_partitions=3 if "readings" in t else 1, replication_factor=1)
                for t in topics.values()
            ]
        )
    finally:
        await admin.close()

    bundles = _bundles(args.bundle)
    receiver = Receiver()
    app = web.Application()
    app.router.add_post("/alerts", receiver.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    hook_port = _free_port()
    await web.TCPSite(runner, "127.0.0.1", hook_port).start()

    serves: list[tuple[str, asyncio.subprocess.Process, int]] = []
    exe = Path(sys.executable).with_name("plantwatch")
    try:
        metrics_port = _free_port()
        (pattern, bundle), *others = bundles.items()
        config = _serve_config(args, run, topics, hook_port, metrics_port, bundle)
        if pattern != "*":
            config["input"]["asset_patterns"] = [pattern]
        config["routes"] = [
            {"name": _route_name(p), "asset_patterns": [p], "model": str(path)}
            for p, path in others
        ]
        config_path = args.workdir / "plantwatch.yaml"
        config_path.write_text(yaml.safe_dump(config))
        log_path = args.workdir / "serve.log"
        kinds = ", ".join(f"{p}: {path}" for p, path in bundles.items())
        print(f"starting: plantwatch serve --config {config_path}   ({kinds}; log: {log_path})")
        with log_path.open("wb") as log:
            serve = await asyncio.create_subprocess_exec(
                str(exe),
                "serve",
                "--config",
                str(config_path),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        serves.append((str(log_path), serve, metrics_port))
        return await _stream_and_report(args, serves, topics, receiver)
    finally:
        for log_name, serve, _ in serves:
            if serve.returncode is None:
                serve.send_signal(signal.SIGTERM)
                rc = await asyncio.wait_for(serve.wait(), timeout=30)
                print(f"serve stopped on SIGTERM (exit status {rc}); log: {log_name}")
        await runner.cleanup()


def _bundles(specs: list[str]) -> dict[str, Path]:
    """``PATTERN=PATH`` (a bundle for the assets that match) or ``PATH`` (for every asset)."""
    out: dict[str, Path] = {}
    for spec in specs:
        pattern, sep, path = spec.partition("=")
        out[pattern if sep else "*"] = Path(path if sep else spec)
    if "*" in out and len(out) > 1:
        raise SystemExit("--bundle: a bundle for every asset cannot be combined with others")
    return out


def _route_name(pattern: str) -> str:
    """A route name from an asset pattern (``compressor-*`` -> ``compressor``)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "", pattern).strip("-.") or "route"


def _serve_config(
    args: argparse.Namespace,
    run: str,
    topics: dict[str, str],
    hook_port: int,
    metrics_port: int,
    bundle: Path,
) -> dict[str, Any]:
    return {
        "kafka": {"bootstrap_servers": args.bootstrap},
        "input": {
            "topics": [topics["readings"]],
            "group_id": f"demo-{run}",
            "dead_letter_topic": topics["dead-letter"],
        },
        "model": {"path": str(bundle)},
        "alerts": {"topic": topics["alerts"]},
        "delivery": {
            "group_id": f"demo-notify-{run}",
            "dead_letter_topic": topics["delivery-dead-letter"],
            "webhooks": [
                {"name": "demo", "url": f"http://127.0.0.1:{hook_port}/alerts", "secret": SECRET}
            ],
        },
        "http": {"host": "127.0.0.1", "port": metrics_port},
        "instance_id": f"demo-{run}",
        "shutdown_deadline_s": 20,
    }


async def _stream_and_report(
    args: argparse.Namespace,
    serves: list[tuple[str, asyncio.subprocess.Process, int]],
    topics: dict[str, str],
    receiver: Receiver,
) -> int:
    metrics_urls = [f"http://127.0.0.1:{port}/metrics" for _, _, port in serves]
    async with ClientSession() as http:
        for log_name, serve, port in serves:
            for _ in range(200):
                if serve.returncode is not None:
                    print(f"serve exited early; see {log_name}", file=sys.stderr)
                    return 1
                try:
                    async with http.get(f"http://127.0.0.1:{port}/readyz") as resp:
                        if resp.status == 200:
                            break
                except OSError:
                    pass
                await asyncio.sleep(0.25)
        sim = PlantSimulator(
            PlantConfig(
                n_pumps=args.pumps,
                n_compressors=args.compressors,
                plant_seed=args.plant_seed,
                seed=args.plant_seed + 100,
                start="2026-01-02T00:00:00Z",
                duration_s=args.hours * 3600,
                n_faults=len(FAULT_KINDS),
                fault_duration_s=(900.0, 1800.0),
            )
        )
        print(
            f"streaming {args.hours:g} h of the plant ({len(sim.assets)} assets, "
            f"{sim.rows} readings) with one fault of each kind to {topics['readings']} ..."
        )
        produced = await produce(sim, args.bootstrap, topics["readings"])
        started = time.monotonic()
        while time.monotonic() - started < 120:
            # Every reading is scored by exactly one service (its kind's).
            texts = [await (await http.get(url)).text() for url in metrics_urls]
            consumed = sum(_metric(t, "plantwatch_readings_total", 'result="ok"') for t in texts)
            if consumed >= produced:
                break
            await asyncio.sleep(0.5)
        await asyncio.sleep(3)  # let delivery catch up with the last events
        texts = [await (await http.get(url)).text() for url in metrics_urls]

    print("\nInjected faults (ground truth) and the alerts that were raised:")
    opened = [e for e in receiver.events.values() if e["event"] == "opened"]
    for f in sim.faults:
        hits = [
            e
            for e in opened
            if e["asset"] == f.asset and f.start_ms <= e["start_ts_ms"] <= f.end_ms + 60_000
        ]
        found = ", ".join(
            f"alert {e['alert_id'][:8]} after {(e['ts_ms'] - f.start_ms) / 1000:.0f} s, top "
            + "/".join(s["sensor"] for s in e["top_sensors"])
            for e in hits
        )
        print(
            f"  {f.asset:<14} {f.kind:<13} {f.start:%H:%M}-{f.end:%H:%M}  "
            f"sensors {'/'.join(f.sensors):<45} -> {found or 'not detected'}"
        )
    false = [
        e
        for e in opened
        if not any(
            f.asset == e["asset"] and f.start_ms <= e["start_ts_ms"] <= f.end_ms + 60_000
            for f in sim.faults
        )
    ]
    print(f"  alerts outside any fault: {len(false)}")
    scored = sum(_metric(t, "plantwatch_windows_scored_total", "") for t in texts)
    print(
        f"\nwindows scored: {scored:.0f}, alert events delivered: {len(receiver.events)}, "
        f"bad signatures: {receiver.bad_signatures}"
    )
    print(f"metrics were at {', '.join(metrics_urls)} (also /healthz, /readyz)")
    return 0


def _metric(text: str, name: str, label: str) -> float:
    for line in text.splitlines():
        if line.startswith(name) and label in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--bundle",
        action="append",
        required=True,
        metavar="[PATTERN=]PATH",
        help="a bundle, for the assets PATTERN matches (a route each); repeat per kind",
    )
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument(
        "--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    )
    parser.add_argument("--pumps", type=int, default=4)
    parser.add_argument("--compressors", type=int, default=2)
    parser.add_argument("--plant-seed", type=int, default=1)
    parser.add_argument("--hours", type=float, default=3.0)
    sys.exit(asyncio.run(main(parser.parse_args())))
