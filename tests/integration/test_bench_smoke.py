"""The performance benchmark keeps working: a seconds-long run against the local Kafka."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


def _bench(script: str, args: list[str], kafka_bootstrap: str, timeout: float) -> str:
    """Run ``bench/<script>`` against the test broker; its stdout (it must exit 0)."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap},
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_performance_benchmark_smoke(kafka_bootstrap: str, tmp_path: Path) -> None:
    out = tmp_path / "performance.md"
    _bench("performance.py", ["--smoke", "--out", str(out)], kafka_bootstrap, 240)
    text = out.read_text()
    assert "Command: `python bench/performance.py --smoke" in text
    for fmt in ("| json |", "| json-batch |", "| binary |"):
        row = next(line for line in text.splitlines() if line.startswith(fmt))
        cells = [c.strip() for c in row.strip("|").split("|")]
        # consume, scoring and serial limits and plantwatch are measured positive rates; so
        # are the consume and serial limits of aiokafka's raw records (the service's way).
        for cell in [*cells[1:5], *cells[8:10]]:
            assert float(cell.split()[0].replace(",", "")) > 0, row
    # Where each format's run spent its time: every stage measured, the loop within the run.
    for fmt in ("json", "json-batch", "binary"):
        line = next(line for line in text.splitlines() if line.startswith(f"- {fmt}: decode "))
        stages, _, loop = line.partition("; loop ")
        assert all(float(part.split()[-1]) > 0 for part in stages.split(": ", 1)[1].split(", ")), (
            line
        )
        spent, _, run = loop.removesuffix(" s").partition(" of ")
        assert 0 < float(spent) <= float(run), line
    assert "peak RSS" in text
    # The live stream is normal operation (its 1 % anomalous assets start only after 10 s): at
    # most a few of its assets (one reading a second each) may alert. Identical readings, as the
    # producer once sent, were stuck sensors to the flatline check: every asset alerted.
    latency = text.split("## Latency of a live stream", 1)[1].split("\n\n", 2)[1]
    rows = [line for line in latency.splitlines() if line.startswith(("| 100 ", "| 200 "))]
    assert len(rows) == 2, latency
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assets, kept_up, alerts = float(cells[1].replace(",", "")), cells[2], int(cells[-1])
        assert kept_up == "yes", row
        assert alerts <= 0.05 * assets, row


def test_shared_topic_pipeline_benchmark_smoke(kafka_bootstrap: str) -> None:
    """Each configuration scores every window of the plant once: one service for all, two
    services sharing the topic (each passes over the other's messages), a topic per kind, or
    one service with a route per kind (which passes over nothing)."""
    steps = 60
    args = ["--steps", str(steps), "--runs", "1", "--formats", "json"]
    stdout = _bench("shared_pipeline.py", args, kafka_bootstrap, 300)
    rows = {
        cells[1]: cells
        for line in stdout.splitlines()
        if line.startswith("| json |")
        for cells in [[c.strip() for c in line.strip("|").split("|")]]
    }
    assert set(rows) == {"one service", "shared topic", "topic per kind", "one service, routes"}
    windows = 1000 * (steps - 32 + 1)  # 1,000 assets, window 32, stride 1
    for name, cells in rows.items():
        rate, scored, passed = (float(cells[i].split()[0].replace(",", "")) for i in (2, 4, 5))
        assert rate > 0, cells
        assert scored == windows, cells
        # Sharing the topic, each of the two services passes over the other kind's messages.
        assert passed == (1000 * steps if name == "shared topic" else 0), cells
