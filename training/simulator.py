"""Deterministic plant simulator: pumps and compressors with labelled, injected faults.

Every asset reports the same sensors (:data:`SENSORS`, units in :data:`UNITS`) so one model can
be trained across kinds. The same :class:`PlantConfig` always yields the same rows, whatever
chunk size they are read in. Typical use::

    summary = write(PlantConfig(n_faults=0, duration_s=7 * 86_400), "normal.parquet")
    sim = PlantSimulator(PlantConfig(seed=1))
    for frame in sim.chunks(4096): ...
    await produce(sim, "127.0.0.1:9092", "readings", rate=200)   # ground truth: sim.faults
"""

from training.sim.config import ASSET_KINDS, FAULT_KINDS, SENSORS, UNITS, PlantConfig
from training.sim.engine import PlantSimulator
from training.sim.faults import FaultEpisode
from training.sim.kafka import produce
from training.sim.output import SimulationSummary, write, write_faults

__all__ = [
    "ASSET_KINDS",
    "FAULT_KINDS",
    "SENSORS",
    "UNITS",
    "FaultEpisode",
    "PlantConfig",
    "PlantSimulator",
    "SimulationSummary",
    "produce",
    "write",
    "write_faults",
]
