#!/usr/bin/env python3
"""Decode throughput of one service's share of a readings topic shared by several services.

Where one service per kind of machine reads the same topic (``input.asset_patterns`` for its
own assets, ``input.other_asset_patterns`` for the others'), a batch interleaves its messages
with other services'. This measures ``Decoder.decode_many`` on batches of 5,000 single-reading
messages (8 sensors, keyed by asset) in which every 2nd, 10th or no message is another
service's, for JSON and the binary format, against a decoder without other patterns on a batch
that is all its own. Best of several runs; messages/s of the whole batch.

    python bench/shared_topic.py [--messages 5000] [--repeats 9]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine_info import cpu_model

from monitor import native
from monitor.records import Decoder, DecoderConfig, encode_binary, encode_json_reading

FEATURES = tuple(f"s{i}" for i in range(8))
T0 = 1_767_225_600_000


def batch(n: int, other_every: int, binary: bool) -> tuple[list[bytes | None], list[bytes | None]]:
    """``n`` messages of 50 pumps, every ``other_every``-th of 50 tanks (0: none)."""
    keys: list[bytes | None] = []
    values: list[bytes | None] = []
    for i in range(n):
        asset = f"tank-{i % 50}" if other_every and i % other_every == 0 else f"pump-{i % 50}"
        keys.append(asset.encode())
        row = np.arange(8, dtype=np.float32).reshape(1, 8) + i
        if binary:
            values.append(encode_binary(asset, FEATURES, np.array([T0 + 1000 * i]), row))
        else:
            values.append(
                encode_json_reading(
                    asset, T0 + 1000 * i, dict(zip(FEATURES, row[0].tolist(), strict=True))
                )
            )
    return keys, values


def rate(
    decoder: Decoder, keys: list[bytes | None], values: list[bytes | None], repeats: int
) -> float:
    decoder.decode_many(keys, values)  # warm the caches
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        decoder.decode_many(keys, values)
        best = min(best, time.perf_counter() - t0)
    return len(keys) / best


def main() -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--messages", type=int, default=5000)
    p.add_argument("--repeats", type=int, default=9)
    args = p.parse_args()
    command = f"python bench/shared_topic.py --messages {args.messages} --repeats {args.repeats}"
    print(f"Command: `{command}`  ")
    print(
        f"Machine: {os.cpu_count()} cores, {cpu_model()}; Python {platform.python_version()}, "
        f"numpy {np.__version__}  "
    )
    print(f"{native.describe()}\n")
    print("| format | other services' messages | decoder | messages/s |")
    print("|---|---|---|---|")
    alone = Decoder(DecoderConfig(features=FEATURES, asset_patterns=("pump-*",)))
    shared = Decoder(
        DecoderConfig(
            features=FEATURES, asset_patterns=("pump-*",), other_asset_patterns=("tank-*",)
        )
    )
    n = args.repeats
    for binary in (False, True):
        fmt = "binary" if binary else "JSON"
        keys, values = batch(args.messages, 0, binary)
        print(f"| {fmt} | none | without other patterns | {rate(alone, keys, values, n):,.0f} |")
        for every, share in ((0, "none"), (10, "1 in 10"), (2, "1 in 2")):
            keys, values = batch(args.messages, every, binary)
            speed = rate(shared, keys, values, n)
            print(f"| {fmt} | {share} | with other patterns | {speed:,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
