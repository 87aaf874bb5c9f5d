"""The simulation engine: advances the whole plant in fixed blocks of steps.

Blocks are aligned to step 0 and always :data:`BLOCK_STEPS` long (the last may be shorter),
whatever chunk size the caller asks for, so output never depends on chunking.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa

from monitor.errors import ConfigError
from training.sim.config import SENSORS, PlantConfig
from training.sim.faults import (
    EpisodeState,
    FaultEpisode,
    Modifiers,
    apply_physical,
    apply_sensor,
    plan_faults,
)
from training.sim.physics import (
    AFTERCOOLER_EFFECTIVENESS,
    AIR_EXPONENT,
    ISENTROPIC_EFFICIENCY,
    POWER_FACTOR,
    SPECS,
    V_NOMINAL,
    AssetParams,
    Schedule,
    ThermalLag,
    ambient_temp,
    bus_voltage,
)

F64 = npt.NDArray[np.float64]
BLOCK_STEPS = 1024
#: Readings are reported at this resolution, like a real historian would store them.
DECIMALS = 4
_SQRT3 = float(np.sqrt(3.0))
_J = {name: j for j, name in enumerate(SENSORS)}


@dataclass
class _Block:
    first: int  # step index of the first row
    values: F64  # [steps, assets, sensors]
    codes: npt.NDArray[np.int32]  # [steps, assets]; 0 = healthy, i = episodes[i - 1]
    episodes: list[FaultEpisode]


class PlantSimulator:
    """A deterministic plant of pumps and compressors; same config, same rows."""

    def __init__(self, config: PlantConfig) -> None:
        self.config = config
        comp = [f"compressor-{i:02d}" for i in range(1, config.n_compressors + 1)]
        pumps = [f"pump-{i:02d}" for i in range(1, config.n_pumps + 1)]
        #: Asset ids in row order (sorted).
        self.assets: tuple[str, ...] = (*comp, *pumps)
        self.kinds: tuple[str, ...] = ("compressor",) * len(comp) + ("pump",) * len(pumps)
        self.sensors: tuple[str, ...] = SENSORS
        root = np.random.SeedSequence(config.seed)
        params_seed, fault_seed, noise_seed, schedule_seed = root.spawn(4)
        if config.plant_seed is not None:
            params_seed = np.random.SeedSequence(config.plant_seed).spawn(4)[0]
        self._params = AssetParams.sample(list(self.kinds), np.random.default_rng(params_seed))
        self._plan = plan_faults(config, self.assets, fault_seed)
        #: Planned fault episodes, in start order.
        self.faults: tuple[FaultEpisode, ...] = tuple(s.episode for s in self._plan)
        self._noise_seed = noise_seed
        self._schedule_seeds = schedule_seed.spawn(len(self.assets))
        # Off only for the counterfactual twin the tests compare against.
        self._inject = True
        self._scales = [self._fault_scales(a) for a in range(len(self.assets))]

    @property
    def steps(self) -> int:
        return self.config.steps

    @property
    def rows(self) -> int:
        return self.config.steps * len(self.assets)

    def chunks(self, chunk_steps: int = 4096) -> Iterator[pd.DataFrame]:
        """Yield the rows as DataFrames of ``chunk_steps`` time steps (all assets) each."""
        for table in self.tables(chunk_steps):
            yield table.to_pandas()

    def tables(self, chunk_steps: int = 4096) -> Iterator[pa.Table]:
        """Like :meth:`chunks`, as Arrow tables (the writers' fast path)."""
        if isinstance(chunk_steps, bool) or not isinstance(chunk_steps, int) or chunk_steps < 1:
            raise ConfigError(f"chunk_steps must be a positive integer, got {chunk_steps!r}")
        chunk_rows = chunk_steps * len(self.assets)
        pending: list[pa.Table] = []
        pending_rows = 0
        for block in self._blocks():
            table = self._table(block)
            pending.append(table)
            pending_rows += table.num_rows
            while pending_rows >= chunk_rows:
                joined = pa.concat_tables(pending)
                yield joined.slice(0, chunk_rows)
                pending = [joined.slice(chunk_rows)]
                pending_rows -= chunk_rows
        if pending_rows:
            yield pa.concat_tables(pending)

    def arrays(self) -> Iterator[tuple[npt.NDArray[np.int64], F64]]:
        """Yield (epoch ms [steps], values [steps, assets, sensors]) per internal block."""
        for block in self._blocks():
            yield self._timestamps(block), block.values

    def _timestamps(self, block: _Block) -> npt.NDArray[np.int64]:
        steps = np.arange(block.first, block.first + len(block.values), dtype=np.int64)
        out: npt.NDArray[np.int64] = self.config.start_ms + steps * self.config.interval_ms
        return out

    def _table(self, block: _Block) -> pa.Table:
        n_steps, n_assets, _ = block.values.shape
        ts = np.repeat(self._timestamps(block), n_assets)
        asset_idx = np.tile(np.arange(n_assets, dtype=np.int32), n_steps)
        codes = block.codes.ravel()
        kinds = pa.array(["", *(e.kind for e in block.episodes)], pa.string())
        sensors = pa.array(["", *(";".join(e.sensors) for e in block.episodes)], pa.string())
        columns: dict[str, pa.Array] = {
            "timestamp": pa.array(ts, pa.timestamp("ms", tz="UTC")),
            "asset": pa.DictionaryArray.from_arrays(asset_idx, pa.array(self.assets)).cast(
                pa.string()
            ),
        }
        for j, name in enumerate(SENSORS):
            columns[name] = pa.array(block.values[:, :, j].ravel())
        columns["label"] = pa.array((codes > 0).astype(np.int8))
        columns["fault"] = pa.DictionaryArray.from_arrays(codes, kinds).cast(pa.string())
        columns["fault_sensors"] = pa.DictionaryArray.from_arrays(codes, sensors).cast(pa.string())
        return pa.table(columns)

    def _fault_scales(self, a: int) -> dict[str, float]:
        p = self._params
        rated_current = float(
            self._current(
                np.array([[1.0]]),
                np.array([[p.q_rated[a] * p.valve[a]]]),
                np.array([[p.shutoff_rise[a] - p.k_loss[a] * (p.q_rated[a] * p.valve[a]) ** 2]]),
                V_NOMINAL,
                a,
            )[0, 0]
        )
        comp = bool(p.is_compressor[a])
        return {
            "vib_fault": 0.9 * float(p.vib_base[a] + p.vib_speed[a]),
            "cav_suction": 0.15 if comp else 0.35,
            "tau_bearing": float(p.tau_bearing[a]),
            # End-of-episode offsets of a drifting sensor.
            "flow": 0.2 * float(p.q_rated[a] * p.valve[a]),
            "suction_pressure": 0.25 * float(p.suction[a]),
            "discharge_pressure": 0.12 * float(p.suction[a] + 0.8 * p.shutoff_rise[a]),
            "bearing_temp": 10.0,
            "fluid_temp": 8.0,
            "motor_current": 0.2 * rated_current,
        }

    def _current(self, speed: F64, q: F64, rise: F64, volts: F64 | float, a: int | slice) -> F64:
        """Line current: no-load magnetising current plus hydraulic power over efficiency."""
        p = self._params
        power_w = q / 3600.0 * np.maximum(rise, 0.0) * 1e5 / p.efficiency[a]
        energised = np.clip(speed / 0.02, 0.0, 1.0)
        out: F64 = energised * p.no_load_current[a] + power_w / (_SQRT3 * volts * POWER_FACTOR)
        return out

    def _blocks(self) -> Iterator[_Block]:
        cfg = self.config
        p = self._params
        n_assets = len(self.assets)
        busy: list[list[tuple[int, int]]] = [[] for _ in self.assets]
        cuts: list[list[int]] = [[] for _ in self.assets]
        for s in self._plan:
            e = s.episode
            busy[s.asset_index].append((e.start_step, e.end_step))
            if e.kind == "stuck_sensor":
                # A load step inside the window, so the frozen reading visibly disagrees.
                cuts[s.asset_index].append((e.start_step + e.end_step) // 2)
        schedules = [
            Schedule(SPECS[k], cfg.interval_s, np.random.default_rng(seed), busy[a], cuts[a])
            for a, (k, seed) in enumerate(zip(self.kinds, self._schedule_seeds, strict=True))
        ]
        episodes = [dataclasses.replace(s, rng=np.random.default_rng(s.seed)) for s in self._plan]
        noise_rng = np.random.default_rng(self._noise_seed)
        noise_std = p.noise  # [assets, sensors]
        lags: tuple[ThermalLag, ThermalLag] | None = None
        previous = np.zeros((n_assets, len(SENSORS)))
        is_comp = p.is_compressor[None, :]
        for first in range(0, cfg.steps, BLOCK_STEPS):
            n = min(BLOCK_STEPS, cfg.steps - first)
            last = first + n
            epoch_s = (cfg.start_ms + np.arange(first, last) * cfg.interval_ms) / 1000.0
            amb = ambient_temp(epoch_s)[:, None]
            speed = np.stack([s.speeds(first, n) for s in schedules], axis=1)
            active = [
                s for s in episodes if s.episode.start_step < last and s.episode.end_step > first
            ]
            mods = Modifiers.neutral(n, n_assets)
            spans: list[tuple[EpisodeState, slice, F64]] = []
            for s in active:
                lo = max(s.episode.start_step, first)
                hi = min(s.episode.end_step, last)
                rows = slice(lo - first, hi - first)
                elapsed = np.arange(lo, hi, dtype=np.float64) - s.episode.start_step
                spans.append((s, rows, elapsed))
                if self._inject:
                    apply_physical(
                        s,
                        rows,
                        elapsed,
                        speed[rows, s.asset_index],
                        mods,
                        self._scales[s.asset_index],
                        cfg.interval_s,
                    )

            # Hydraulics: affinity laws. Flow ~ speed x opening, pressure rise ~ speed^2 minus
            # losses ~ flow^2. A leak downstream of the machine but upstream of the flow meter
            # lowers the system resistance: the machine runs out on its curve (more flow, less
            # pressure, more power) while less reaches the meter.
            leak_q = mods.leak * p.q_rated * speed
            q_machine = p.q_rated * speed * p.valve * mods.valve * mods.flow + 0.8 * leak_q
            flow = q_machine - leak_q
            tank = np.where(is_comp, 0.004, 0.04) * np.sin(
                2 * np.pi * epoch_s[:, None] / 21_600.0 + p.tank_phase
            )
            suction = p.suction + tank - p.k_suction * q_machine**2 + mods.suction
            rise = p.shutoff_rise * speed**2 - p.k_loss * q_machine**2
            rise = np.maximum(rise, 0.0) * mods.rise
            discharge = suction + rise + mods.discharge
            bus = bus_voltage(epoch_s)[:, None]
            current = self._current(speed, q_machine, rise, bus, slice(None))
            voltage = bus - p.cable_ohm * current
            energised = np.clip(speed / 0.02, 0.0, 1.0)
            vibration = 0.08 + energised * (p.vib_base + p.vib_speed * speed**2) + mods.vibration

            # Thermal: first-order lags towards ambient plus load heating.
            bearing_in = amb + p.bearing_rise * speed**2
            wetted = np.clip(speed / 0.3, 0.0, 1.0)
            liquid = amb + wetted * (0.8 * (p.process_temp - amb) + 2.0 * speed**2)
            # From the healthy operating point: a fault's pressure change would otherwise linger
            # in this lag past the episode's end and mislabel the rows after it.
            q_healthy = p.q_rated * speed * p.valve
            ratio = 1.0 + (p.shutoff_rise * speed**2 - p.k_loss * q_healthy**2) / p.suction
            ratio = np.maximum(ratio, 1.0)
            heat_k = (amb + 273.15) * (ratio**AIR_EXPONENT - 1.0) / ISENTROPIC_EFFICIENCY
            air = amb + (1.0 - AFTERCOOLER_EFFECTIVENESS) * heat_k
            fluid_in = np.where(is_comp, air, liquid)
            if lags is None:
                lags = (
                    ThermalLag(p.tau_bearing, cfg.interval_s, bearing_in[0]),
                    ThermalLag(p.tau_fluid, cfg.interval_s, fluid_in[0]),
                )
            bearing = lags[0].step(bearing_in) + mods.bearing
            fluid = lags[1].step(fluid_in)

            values = np.stack(
                [flow, suction, discharge, bearing, fluid, vibration, current, voltage], axis=2
            )
            noise = noise_rng.standard_normal(values.shape)
            std = np.broadcast_to(noise_std, values.shape).copy()
            std[:, :, _J["vibration_rms"]] += 0.03 * vibration
            values += noise * std
            for name in ("flow", "vibration_rms", "motor_current"):
                np.maximum(values[:, :, _J[name]], 0.0, out=values[:, :, _J[name]])

            codes = np.zeros((n, n_assets), dtype=np.int32)
            for i, (s, rows, elapsed) in enumerate(spans, start=1):
                codes[rows, s.asset_index] = i
                if self._inject:
                    apply_sensor(s, rows, elapsed, values, previous, self._scales[s.asset_index])
            values = np.round(values, DECIMALS)
            previous = values[-1]
            yield _Block(first, values, codes, [s.episode for s, _, _ in spans])


def _counterfactual(sim: PlantSimulator) -> PlantSimulator:
    """The same plant, schedule, noise and labels, with the faults' effects left out."""
    twin = PlantSimulator(sim.config)
    twin._inject = False
    return twin
