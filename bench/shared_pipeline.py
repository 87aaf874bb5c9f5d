#!/usr/bin/env python3
"""What sharing a readings topic between one service per kind of machine costs, end to end.

A plant with two kinds of machine, each with its own bundle, can be served three ways; this
runs each against the local Kafka broker with the real :class:`monitor.service.Service`
(decode → windows → score → detector → transactional commit, stride 1) and reports how long
the whole plant's readings take:

* ``one service``: one service, one bundle, every asset (the reference; not what a plant of
  two kinds should run for detection, see ``bench/results/detection.md`` session 14);
* ``shared topic``: two services at once, one per kind, both reading the one topic that holds
  every asset (``input.asset_patterns`` its own kind, ``input.other_asset_patterns`` the other):
  each passes over the other's messages;
* ``topic per kind``: two services at once, each reading a topic that holds its kind only;
* ``one service, routes``: one service reading the one topic, a route per kind
  (``input.asset_patterns`` and ``model.path`` for one kind, ``routes`` for the other): every
  message is fetched once, and each route's decoder sets the other's aside.

Each service runs in a process of its own (as two deployments would), both started together
behind a barrier; a configuration's time is the slower service's, from the moment it is started
to its last message (``bench.performance.plantwatch_run``). Both kinds use the same bundle here
(8 sensors, dense, window 32): the model's quality is not measured, only the data path.
Readings are synthetic (``bench.performance``); 1,000 assets, half of each kind, JSON single
readings or the binary format (100 readings a message).

    python bench/shared_pipeline.py [--steps 1000] [--runs 3] [--formats json,binary]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.machine_info import cpu_model
from bench.performance import (
    messages,
    plantwatch_run,
    prefill,
    synthetic,
    train_bundle,
)

N_ASSETS = 1000
KINDS = {"a": "asset-00[0-4]*", "b": "asset-00[5-9]*"}  # assets 0-499 and 500-999


def _serve(
    bootstrap: str,
    topic: str,
    bundle_path: str,
    n_messages: int,
    input_settings: dict[str, Any],
    barrier: Any,
    results: Any,
) -> None:
    """One service in this process (``plantwatch_run``), started behind ``barrier``."""
    from monitor.bundle import load_bundle

    async def main() -> tuple[float, float, float, float]:
        bundle = load_bundle(Path(bundle_path))
        barrier.wait()
        cpu0 = time.process_time()
        run = await plantwatch_run(bootstrap, topic, bundle, n_messages, **input_settings)
        return run.seconds, time.process_time() - cpu0, run.windows, run.other_assets

    results.put(asyncio.run(main()))


def run(
    bootstrap: str, bundle_path: str, plan: list[tuple[str, int, dict[str, Any]]]
) -> tuple[float, float, float, float]:
    """Services of ``plan`` (topic, messages, input settings) at once, each in a process: the
    slower one's seconds, their CPU seconds, windows scored and other assets' messages."""
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(len(plan))
    results = ctx.Queue()
    procs = [
        ctx.Process(
            target=_serve, args=(bootstrap, topic, bundle_path, n, settings, barrier, results)
        )
        for topic, n, settings in plan
    ]
    for p in procs:
        p.start()
    out = [results.get(timeout=600) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        if p.exitcode != 0:
            raise RuntimeError(f"a service process exited with {p.exitcode}")
    return (
        max(r[0] for r in out),
        sum(r[1] for r in out),
        sum(r[2] for r in out),
        sum(r[3] for r in out),
    )


async def prefill_all(
    bootstrap: str, fmt: str, features: list[str], steps: int, partitions: int
) -> tuple[str, int, dict[str, tuple[str, int]]]:
    """The plant's topic and one topic per kind, with the same readings."""
    values = synthetic(N_ASSETS, steps, len(features))
    msgs = messages(fmt, features, values, t0=1_767_225_600_000)
    tag = uuid.uuid4().hex[:6]
    plant = f"bench-shared-{fmt}-{tag}"
    await prefill(bootstrap, plant, msgs, partitions)
    per_kind = {}
    for kind in KINDS:
        first = kind == "a"
        own = [(k, v) for k, v in msgs if (int(k.decode()[-5:]) < N_ASSETS // 2) == first]
        topic = f"bench-kind-{kind}-{fmt}-{tag}"
        await prefill(bootstrap, topic, own, partitions)
        per_kind[kind] = (topic, len(own))
    return plant, len(msgs), per_kind


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=1000, help="readings per asset")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--formats", default="json,binary")
    ap.add_argument("--partitions", type=int, default=4)
    args = ap.parse_args()
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    work = Path(tempfile.mkdtemp(prefix="pw-shared-"))
    bundle = train_bundle(work, "dense", 8, 32)
    features = list(bundle.manifest.features)
    readings = N_ASSETS * args.steps
    print(f"Command: `python bench/shared_pipeline.py {' '.join(sys.argv[1:])}`  ")
    print(f"Machine: {os.cpu_count()} cores, {cpu_model()}; Python {platform.python_version()}  ")
    print(
        f"Data: {N_ASSETS} assets (two kinds of {N_ASSETS // 2}) × {args.steps} readings, "
        f"{args.partitions} partitions; {args.runs} runs, median (min–max)\n"
    )
    print("| format | configuration | readings/s of the plant | CPU s (all services) "
          "| windows scored | other assets' messages passed over |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for fmt in args.formats.split(","):
        plant, n_plant, per_kind = asyncio.run(
            prefill_all(bootstrap, fmt, features, args.steps, args.partitions)
        )
        configs: dict[str, list[tuple[str, int, dict[str, Any]]]] = {
            "one service": [(plant, n_plant, {})],
            "shared topic": [
                (
                    plant,
                    n_plant,
                    {"asset_patterns": [own], "other_asset_patterns": [other]},
                )
                for own, other in ((KINDS["a"], KINDS["b"]), (KINDS["b"], KINDS["a"]))
            ],
            "topic per kind": [
                (topic, n, {"asset_patterns": [KINDS[kind]]})
                for kind, (topic, n) in per_kind.items()
            ],
            "one service, routes": [
                (
                    plant,
                    n_plant,
                    {
                        "asset_patterns": [KINDS["a"]],
                        "routes": [
                            {"name": "b", "asset_patterns": [KINDS["b"]], "model": bundle.path}
                        ],
                    },
                )
            ],
        }
        found: dict[str, list[tuple[float, float, float, float]]] = {c: [] for c in configs}
        for _ in range(args.runs):  # alternate the configurations
            for name, plan in configs.items():
                found[name].append(run(bootstrap, str(bundle.path), plan))
        for name, runs in found.items():
            rates = [readings / r[0] for r in runs]
            cpu = statistics.median(r[1] for r in runs)
            scored = statistics.median(r[2] for r in runs)
            other = statistics.median(r[3] for r in runs)
            spread = f"{statistics.median(rates):,.0f} ({min(rates):,.0f}–{max(rates):,.0f})"
            print(
                f"| {fmt} | {name} | {spread} | {cpu:.1f} | {scored:,.0f} | {other:,.0f} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
