"""Simulator configuration: sensors, asset kinds, fault kinds and the validated plant config."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime

from monitor.errors import ConfigError

#: Sensor columns, the same for every asset kind so one model can serve them all.
SENSORS: tuple[str, ...] = (
    "flow",  # m3/h, volumetric flow delivered downstream
    "suction_pressure",  # bar(a)
    "discharge_pressure",  # bar(a)
    "bearing_temp",  # degC, drive-end bearing
    "fluid_temp",  # degC, pumped liquid / compressed air after the aftercooler
    "vibration_rms",  # mm/s, velocity RMS on the bearing housing
    "motor_current",  # A, line current
    "motor_voltage",  # V, line-to-line at the motor terminals
)

#: Sensor units, for reports and plots.
UNITS: dict[str, str] = {
    "flow": "m3/h",
    "suction_pressure": "bar(a)",
    "discharge_pressure": "bar(a)",
    "bearing_temp": "degC",
    "fluid_temp": "degC",
    "vibration_rms": "mm/s",
    "motor_current": "A",
    "motor_voltage": "V",
}

ASSET_KINDS: tuple[str, ...] = ("pump", "compressor")

FAULT_KINDS: tuple[str, ...] = (
    "bearing_wear",
    "cavitation",
    "stuck_sensor",
    "sensor_drift",
    "valve_step",
    "leak",
)


@dataclass(frozen=True)
class PlantConfig:
    """What to simulate. Invalid values raise :class:`ConfigError` naming the setting."""

    n_pumps: int = 4
    n_compressors: int = 2
    interval_s: float = 1.0
    start: str | datetime = "2026-01-01T00:00:00Z"
    duration_s: float = 86_400.0
    #: Randomness of this period: operating schedule, noise and fault plan.
    seed: int = 0
    #: The plant's identity: each asset's physical parameters. ``None`` uses ``seed``. Give the
    #: same ``plant_seed`` with different ``seed`` s to simulate the same machines on other days.
    plant_seed: int | None = None
    fault_kinds: tuple[str, ...] = FAULT_KINDS
    #: Expected fault episodes per asset and simulated day; ignored when ``n_faults`` is set.
    faults_per_asset_day: float = 1.0
    #: Exact number of fault episodes over the whole plant.
    n_faults: int | None = None
    #: Episode length range in seconds (uniform).
    fault_duration_s: tuple[float, float] = (900.0, 3600.0)
    start_ms: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        def bad(setting: str, why: str) -> ConfigError:
            return ConfigError(f"simulator setting {setting}: {why}")

        for name in ("n_pumps", "n_compressors"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 99:
                raise bad(name, f"must be an integer from 0 to 99, got {value!r}")
        if self.n_pumps + self.n_compressors == 0:
            raise bad("n_pumps", "the plant needs at least one pump or compressor")
        if not _finite(self.interval_s) or self.interval_s <= 0:
            raise bad(
                "interval_s", f"must be a positive number of seconds, got {self.interval_s!r}"
            )
        if abs(self.interval_s * 1000 - round(self.interval_s * 1000)) > 1e-6:
            raise bad(
                "interval_s", f"must be a whole number of milliseconds, got {self.interval_s}"
            )
        if not _finite(self.duration_s) or self.duration_s < self.interval_s:
            raise bad("duration_s", f"must be at least interval_s, got {self.duration_s!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise bad("seed", f"must be a non-negative integer, got {self.seed!r}")
        ps = self.plant_seed
        if ps is not None and (isinstance(ps, bool) or not isinstance(ps, int) or ps < 0):
            raise bad("plant_seed", f"must be a non-negative integer, got {ps!r}")
        unknown = [k for k in self.fault_kinds if k not in FAULT_KINDS]
        if unknown:
            raise bad(
                "fault_kinds", f"unknown {unknown[0]!r}; choose from {', '.join(FAULT_KINDS)}"
            )
        if len(set(self.fault_kinds)) != len(self.fault_kinds):
            raise bad("fault_kinds", "lists a kind twice")
        if not _finite(self.faults_per_asset_day) or self.faults_per_asset_day < 0:
            raise bad("faults_per_asset_day", f"must be >= 0, got {self.faults_per_asset_day!r}")
        if self.n_faults is not None:
            if isinstance(self.n_faults, bool) or not isinstance(self.n_faults, int):
                raise bad("n_faults", f"must be an integer, got {self.n_faults!r}")
            if self.n_faults < 0:
                raise bad("n_faults", f"must be >= 0, got {self.n_faults}")
            if self.n_faults > 0 and not self.fault_kinds:
                raise bad("n_faults", "is positive but fault_kinds is empty")
        lo, hi = self.fault_duration_s
        if not (_finite(lo) and _finite(hi)) or not 0 < lo <= hi:
            raise bad("fault_duration_s", f"must be (min, max) with 0 < min <= max, got {(lo, hi)}")
        if lo < 10 * self.interval_s:
            raise bad("fault_duration_s", "minimum must span at least 10 intervals")
        object.__setattr__(self, "start_ms", _parse_start(self.start))

    @property
    def interval_ms(self) -> int:
        return round(self.interval_s * 1000)

    @property
    def steps(self) -> int:
        """Number of time steps (rows per asset)."""
        return int(self.duration_s * 1000 // self.interval_ms)

    @property
    def n_assets(self) -> int:
        return self.n_pumps + self.n_compressors

    def planned_faults(self) -> int:
        """How many fault episodes this config asks for."""
        if not self.fault_kinds:
            return 0
        if self.n_faults is not None:
            return self.n_faults
        days = self.duration_s / 86_400.0
        return round(self.faults_per_asset_day * self.n_assets * days)


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _parse_start(start: str | datetime) -> int:
    if isinstance(start, str):
        try:
            parsed = datetime.fromisoformat(start.replace("Z", "+00:00"))
        except ValueError:
            raise ConfigError(
                f"simulator setting start: not an ISO-8601 timestamp: {start!r}"
            ) from None
    elif isinstance(start, datetime):
        parsed = start
    else:
        raise ConfigError(f"simulator setting start: expected ISO-8601 text, got {start!r}")
    if parsed.tzinfo is None:
        raise ConfigError(f"simulator setting start: needs a UTC offset (e.g. 'Z'): {start!r}")
    return round(parsed.astimezone(UTC).timestamp() * 1000)
