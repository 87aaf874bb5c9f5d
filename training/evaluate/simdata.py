"""A simulator dataset in the generic layout: ``train/normal.csv`` and ``test/faulty.csv``.

Both days come from the same plant (``plant_seed``): training is normal operation, the test day
has labelled faults whose ``fault_sensors`` column names the sensors each fault affects (the
ground truth for root-cause attribution).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from training.simulator import FAULT_KINDS, PlantConfig, write


@dataclass(frozen=True)
class SimDataset:
    n_pumps: int = 3
    n_compressors: int = 1
    plant_seed: int = 11
    train_hours: float = 12.0
    test_hours: float = 8.0
    #: Fault episodes over the whole test plant (default: two of every kind).
    n_faults: int = 2 * len(FAULT_KINDS)
    fault_kinds: tuple[str, ...] = FAULT_KINDS
    train_seed: int = 11
    test_seed: int = 12


def write_sim_dataset(root: str | Path, spec: SimDataset = SimDataset()) -> Path:
    """Write the dataset under ``root`` (``train/`` and ``test/``); return ``root``."""
    out = Path(root)
    (out / "train").mkdir(parents=True, exist_ok=True)
    (out / "test").mkdir(parents=True, exist_ok=True)
    write(
        PlantConfig(
            n_pumps=spec.n_pumps,
            n_compressors=spec.n_compressors,
            plant_seed=spec.plant_seed,
            duration_s=spec.train_hours * 3600,
            n_faults=0,
            seed=spec.train_seed,
        ),
        out / "train" / "normal.csv",
    )
    # The same hours of the next day, so the daily cycle matches what training saw.
    write(
        PlantConfig(
            n_pumps=spec.n_pumps,
            n_compressors=spec.n_compressors,
            plant_seed=spec.plant_seed,
            start="2026-01-02T00:00:00Z",
            duration_s=spec.test_hours * 3600,
            n_faults=spec.n_faults,
            fault_kinds=spec.fault_kinds,
            seed=spec.test_seed,
        ),
        out / "test" / "faulty.csv",
    )
    return out
