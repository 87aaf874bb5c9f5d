"""Write a simulated plant to CSV or Parquet, streaming chunk by chunk."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from monitor.errors import ConfigError, DataError
from training.sim.config import PlantConfig
from training.sim.engine import PlantSimulator
from training.sim.faults import FaultEpisode


@dataclass(frozen=True)
class SimulationSummary:
    """What :func:`write` produced."""

    path: Path
    rows: int
    assets: tuple[str, ...]
    faults: tuple[FaultEpisode, ...]


def write(
    source: PlantConfig | PlantSimulator, path: str | Path, *, chunk_steps: int = 4096
) -> SimulationSummary:
    """Simulate and write rows to ``path``: ``.csv`` (ISO-8601 UTC text) or ``.parquet``.

    The file appears under its name only once complete.
    """
    sim = source if isinstance(source, PlantSimulator) else PlantSimulator(source)
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".parquet"):
        raise ConfigError(f"output {path}: unknown format; use a .csv or .parquet file name")
    partial = path.with_name(path.name + ".partial")
    rows = 0
    writer: pq.ParquetWriter | pacsv.CSVWriter | None = None
    try:
        try:
            for table in sim.tables(chunk_steps):
                if suffix == ".csv":
                    table = _csv_ready(table, sim.config)
                if writer is None:
                    writer = (
                        pacsv.CSVWriter(str(partial), table.schema, write_options=_CSV_OPTIONS)
                        if suffix == ".csv"
                        else pq.ParquetWriter(str(partial), table.schema, compression="zstd")
                    )
                writer.write_table(table)
                rows += table.num_rows
        finally:
            if writer is not None:
                writer.close()
        os.replace(partial, path)
    except (OSError, pa.ArrowIOError) as exc:
        partial.unlink(missing_ok=True)
        raise DataError(f"cannot write {path}: {getattr(exc, 'strerror', None) or exc}") from exc
    return SimulationSummary(path=path, rows=rows, assets=sim.assets, faults=sim.faults)


_CSV_OPTIONS = pacsv.WriteOptions(quoting_style="none")


def _csv_ready(table: pa.Table, config: PlantConfig) -> pa.Table:
    """Timestamps as ISO-8601 text ending in Z: whole seconds unless the steps need ms."""
    whole = config.interval_ms % 1000 == 0 and config.start_ms % 1000 == 0
    ts = table.column("timestamp").cast(pa.timestamp("s" if whole else "ms", tz="UTC"))
    text = pc.strftime(ts, format="%Y-%m-%dT%H:%M:%SZ")
    return table.set_column(table.schema.get_field_index("timestamp"), "timestamp", text)


def write_faults(faults: Sequence[FaultEpisode], path: str | Path) -> None:
    """Write fault episodes as a JSON list (ground truth for a Kafka run)."""
    path = Path(path)
    try:
        path.write_text(json.dumps([f.to_dict() for f in faults], indent=1) + "\n")
    except OSError as exc:
        raise DataError(f"cannot write {path}: {exc.strerror or exc}") from exc
