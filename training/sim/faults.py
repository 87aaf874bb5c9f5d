"""Fault episodes: deterministic planning up front, and their effects on one block of steps."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import numpy.typing as npt

from monitor.errors import ConfigError
from training.sim.config import SENSORS, PlantConfig

F64 = npt.NDArray[np.float64]

#: Sensors each fault kind moves; stuck_sensor and sensor_drift pick one from their candidates.
KIND_SENSORS: dict[str, tuple[str, ...]] = {
    "bearing_wear": ("bearing_temp", "vibration_rms"),
    "cavitation": (
        "flow",
        "suction_pressure",
        "discharge_pressure",
        "vibration_rms",
        "motor_current",
    ),
    "valve_step": ("flow", "discharge_pressure", "motor_current"),
    "leak": ("flow", "discharge_pressure", "motor_current"),
}
STUCK_CANDIDATES = ("flow", "discharge_pressure", "vibration_rms", "motor_current")
DRIFT_CANDIDATES = (
    "flow",
    "suction_pressure",
    "discharge_pressure",
    "bearing_temp",
    "fluid_temp",
    "motor_current",
)
#: Faults start after this much quiet time (or a tenth of the run, if shorter).
WARMUP_S = 1800.0
#: Minimum quiet time between two episodes on the same asset.
GAP_S = 600.0


@dataclass(frozen=True)
class FaultEpisode:
    """One labelled fault on one asset; rows with ``start_step <= step < end_step`` carry it."""

    asset: str
    kind: str
    sensors: tuple[str, ...]
    start_step: int
    end_step: int  # exclusive
    start: datetime  # timestamp of the first faulty row, UTC
    end: datetime  # timestamp just after the last faulty row, UTC

    @property
    def start_ms(self) -> int:
        return round(self.start.timestamp() * 1000)

    @property
    def end_ms(self) -> int:
        return round(self.end.timestamp() * 1000)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: ISO timestamps and epoch milliseconds (end exclusive)."""
        return {
            "asset": self.asset,
            "kind": self.kind,
            "sensors": list(self.sensors),
            "start": self.start.isoformat().replace("+00:00", "Z"),
            "end": self.end.isoformat().replace("+00:00", "Z"),
            "start_ms": self.start_ms,
            "end_ms": self.end_ms,
            "start_step": self.start_step,
            "end_step": self.end_step,
        }


@dataclass
class EpisodeState:
    """Private per-episode parameters and the random stream for its noise."""

    episode: FaultEpisode
    asset_index: int
    severity: float
    sign: float
    phase: float  # of the cavitation pulsation
    seed: np.random.SeedSequence
    rng: np.random.Generator | None = None  # per run, for the episode's noise
    frozen: float | None = None  # the stuck sensor's reading


def plan_faults(
    config: PlantConfig, assets: tuple[str, ...], seed: np.random.SeedSequence
) -> list[EpisodeState]:
    """Place ``config.planned_faults()`` episodes, apart per asset, balanced over assets/kinds."""
    n = config.planned_faults()
    rng = np.random.default_rng(seed)
    steps = config.steps
    dt = config.interval_s
    lo = max(10, int(config.fault_duration_s[0] / dt))
    hi = max(lo, int(config.fault_duration_s[1] / dt))
    warmup = int(min(WARMUP_S, 0.1 * config.duration_s) / dt)
    gap = int(GAP_S / dt)
    kinds = list(config.fault_kinds)
    rng.shuffle(kinds)
    taken: list[list[tuple[int, int]]] = [[] for _ in assets]
    out: list[EpisodeState] = []
    for i in range(n):
        kind = kinds[i % len(kinds)]
        duration = int(rng.integers(lo, hi + 1))
        # Least-loaded assets first, ties in random order, so faults spread over the plant.
        order = sorted(range(len(assets)), key=lambda a: (len(taken[a]), rng.uniform()))
        placed = None
        for a in order:
            if warmup + duration > steps:
                break
            for _ in range(50):
                start = int(rng.integers(warmup, steps - duration + 1))
                end = start + duration
                if all(end + gap <= s or e + gap <= start for s, e in taken[a]):
                    placed = (a, start, end)
                    break
            if placed:
                break
        if placed is None:
            raise ConfigError(
                f"simulator setting n_faults: {n} episodes of {config.fault_duration_s[0]:g}-"
                f"{config.fault_duration_s[1]:g} s do not fit in duration_s={config.duration_s:g}"
                f" on {len(assets)} assets"
            )
        a, start, end = placed
        taken[a].append((start, end))
        if kind == "stuck_sensor":
            sensors: tuple[str, ...] = (str(rng.choice(STUCK_CANDIDATES)),)
        elif kind == "sensor_drift":
            sensors = (str(rng.choice(DRIFT_CANDIDATES)),)
        else:
            sensors = KIND_SENSORS[kind]
        episode = FaultEpisode(
            asset=assets[a],
            kind=kind,
            sensors=sensors,
            start_step=start,
            end_step=end,
            start=_ts(config, start),
            end=_ts(config, end),
        )
        out.append(
            EpisodeState(
                episode=episode,
                asset_index=a,
                severity=float(rng.uniform(0.8, 1.2)),
                sign=float(rng.choice((-1.0, 1.0))),
                phase=float(rng.uniform(0.0, 2 * np.pi)),
                seed=seed.spawn(1)[0],
            )
        )
    out.sort(key=lambda s: (s.episode.start_step, s.episode.asset))
    return out


def _ts(config: PlantConfig, step: int) -> datetime:
    return datetime.fromtimestamp((config.start_ms + step * config.interval_ms) / 1000, tz=UTC)


@dataclass
class Modifiers:
    """Physical disturbances for one block, [steps, assets]; neutral values mean healthy."""

    valve: F64  # multiplies the valve opening
    leak: F64  # leaked fraction of rated flow at full speed
    suction: F64  # bar added to suction pressure
    flow: F64  # multiplies the flow through the machine
    rise: F64  # multiplies the pressure rise
    discharge: F64  # bar added to discharge pressure
    vibration: F64  # mm/s added
    bearing: F64  # degC added to the bearing temperature

    @classmethod
    def neutral(cls, steps: int, assets: int) -> Modifiers:
        def full(v: float) -> F64:
            return np.full((steps, assets), v, dtype=np.float64)

        return cls(full(1), full(0), full(0), full(1), full(1), full(0), full(0), full(0))


def apply_physical(
    state: EpisodeState,
    rows: slice,
    elapsed: F64,
    speed: F64,
    mods: Modifiers,
    spec: dict[str, float],
    interval_s: float,
) -> None:
    """Write one episode's disturbance into ``mods`` for the block rows it covers.

    ``elapsed`` counts steps since the episode started, ``speed`` is the asset's speed there and
    ``spec`` holds a few of the asset's design values that scale the effect.
    """
    a = state.asset_index
    kind = state.episode.kind
    sev = state.severity
    n = len(elapsed)
    assert state.rng is not None, "episode state is not started"
    progress = elapsed / (state.episode.end_step - state.episode.start_step)
    running = np.clip(speed / 0.3, 0.0, 1.0)
    if kind == "bearing_wear":
        # Defect vibration grows as the damage spreads; friction heat follows with the bearing's
        # thermal time constant.
        growth = sev * (0.4 + 0.6 * progress)
        mods.vibration[rows, a] += growth * spec["vib_fault"] * (0.3 + 0.7 * speed**2)
        heat = 1.0 - np.exp(-elapsed * interval_s / spec["tau_bearing"])
        mods.bearing[rows, a] += growth * 16.0 * speed**2 * heat
    elif kind == "cavitation":
        # Low inlet pressure: vapour bubbles collapse, head and flow drop and pulsate.
        pulse = np.sin(
            2 * np.pi * elapsed * interval_s / 7.0 + state.phase
        ) + 0.7 * state.rng.standard_normal(n)
        mods.suction[rows, a] -= sev * spec["cav_suction"] * running
        mods.flow[rows, a] *= 1.0 - sev * running * (0.08 + 0.06 * pulse)
        mods.rise[rows, a] *= 1.0 - sev * running * (0.10 + 0.05 * pulse)
        mods.vibration[rows, a] += (
            sev * running * (spec["vib_fault"] * 0.8 + 0.5 * np.abs(state.rng.standard_normal(n)))
        )
    elif kind == "valve_step":
        mods.valve[rows, a] *= 1.0 - 0.4 * sev
    elif kind == "leak":
        # A small initial weep opens up over the episode.
        mods.leak[rows, a] += sev * (0.2 + 0.15 * progress)


def apply_sensor(
    state: EpisodeState,
    rows: slice,
    elapsed: F64,
    values: F64,
    previous: F64,
    drift_scale: dict[str, float],
) -> None:
    """Corrupt the measured ``values`` [steps, assets, sensors] of a sensor fault in place.

    ``previous`` holds each asset's last measured row before the block, for a sensor that
    sticks right at the block's first row.
    """
    a = state.asset_index
    progress = elapsed / (state.episode.end_step - state.episode.start_step)
    sensor = state.episode.sensors[0]
    j = SENSORS.index(sensor)
    if state.episode.kind == "stuck_sensor":
        if state.frozen is None:
            first = int(rows.start)
            state.frozen = float(values[first - 1, a, j] if first > 0 else previous[a, j])
        values[rows, a, j] = state.frozen
    elif state.episode.kind == "sensor_drift":
        values[rows, a, j] += state.sign * state.severity * drift_scale[sensor] * progress
