"""Asset physics: per-kind parameters, operating schedules and first-order thermal lags.

Everything here is pure numpy. Units: flow m3/h, pressure bar(a), temperature degC, vibration
mm/s, current A, voltage V, time s. Speeds and valve openings are fractions of rated.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]


@dataclass(frozen=True)
class KindSpec:
    """Nominal design of one asset kind; each asset jitters these a little."""

    q_rated: float  # m3/h at full speed, valve fully open
    valve: float  # normal valve / guide-vane opening
    shutoff_rise: float  # bar of pressure rise at full speed and zero flow
    loss_rated: float  # bar lost inside the machine at rated flow (grows with flow^2)
    suction: float  # bar(a) upstream static pressure
    suction_loss_rated: float  # bar suction-line/filter loss at rated flow
    efficiency: float  # overall wire-to-fluid efficiency
    no_load_current: float  # A drawn by the energised motor at no load
    cable_ohm: float  # V drop per A of current between bus and motor terminals
    vib_base: float  # mm/s at any speed once running
    vib_speed: float  # mm/s added at full speed (grows with speed^2)
    bearing_rise: float  # degC above ambient at full speed, steady state
    tau_bearing: float  # s
    tau_fluid: float  # s
    setpoints: tuple[float, ...]  # speed setpoints the operators use
    ramp_per_s: float  # speed change per second during starts, stops and load steps
    hold_s: tuple[float, float]  # how long a setpoint is held
    stop_s: tuple[float, float]  # how long a stop lasts
    p_stop: float  # probability that the next mode change is a stop
    noise: tuple[float, ...]  # Gaussian sensor noise std, in SENSORS order


PUMP = KindSpec(
    q_rated=120.0,
    valve=0.85,
    shutoff_rise=5.0,
    loss_rated=1.2,
    suction=1.5,
    suction_loss_rated=0.2,
    efficiency=0.68,
    no_load_current=7.0,
    cable_ohm=0.02,
    vib_base=0.5,
    vib_speed=1.9,
    bearing_rise=28.0,
    tau_bearing=900.0,
    tau_fluid=300.0,
    setpoints=(0.7, 0.8, 0.9, 1.0),
    ramp_per_s=0.05,
    hold_s=(1200.0, 7200.0),
    stop_s=(300.0, 1800.0),
    p_stop=0.12,
    noise=(0.9, 0.015, 0.025, 0.15, 0.12, 0.06, 0.35, 0.8),
)

COMPRESSOR = KindSpec(
    q_rated=600.0,
    valve=0.95,
    shutoff_rise=8.5,
    loss_rated=1.5,
    suction=1.0,
    suction_loss_rated=0.06,
    efficiency=0.62,
    no_load_current=35.0,
    cable_ohm=0.008,
    vib_base=0.9,
    vib_speed=2.8,
    bearing_rise=38.0,
    tau_bearing=1200.0,
    tau_fluid=180.0,
    setpoints=(0.8, 0.87, 0.94, 1.0),
    ramp_per_s=0.0125,
    hold_s=(2700.0, 14400.0),
    stop_s=(600.0, 2400.0),
    p_stop=0.06,
    noise=(4.0, 0.008, 0.04, 0.15, 0.25, 0.08, 1.5, 0.8),
)

SPECS: dict[str, KindSpec] = {"pump": PUMP, "compressor": COMPRESSOR}
V_NOMINAL = 400.0
POWER_FACTOR = 0.86
#: Gas exponent (k-1)/k for air, for the compressor's discharge temperature.
AIR_EXPONENT = 0.2857
AFTERCOOLER_EFFECTIVENESS = 0.8
ISENTROPIC_EFFICIENCY = 0.8


@dataclass(frozen=True)
class AssetParams:
    """Per-asset parameter vectors, shape [assets], jittered from each kind's spec."""

    is_compressor: npt.NDArray[np.bool_]
    q_rated: F64
    valve: F64
    shutoff_rise: F64
    k_loss: F64
    suction: F64
    k_suction: F64
    efficiency: F64
    no_load_current: F64
    cable_ohm: F64
    vib_base: F64
    vib_speed: F64
    bearing_rise: F64
    process_temp: F64  # pumps: temperature of the liquid arriving from the process
    tau_bearing: F64
    tau_fluid: F64
    noise: F64  # [assets, sensors]
    tank_phase: F64

    @classmethod
    def sample(cls, kinds: list[str], rng: np.random.Generator) -> AssetParams:
        specs = [SPECS[k] for k in kinds]
        n = len(specs)

        def jitter(attr: str, rel: float) -> F64:
            base = np.array([getattr(s, attr) for s in specs], dtype=np.float64)
            out: F64 = base * (1.0 + rel * rng.uniform(-1.0, 1.0, n))
            return out

        q_rated = jitter("q_rated", 0.1)
        valve = jitter("valve", 0.04)
        return cls(
            is_compressor=np.array([k == "compressor" for k in kinds]),
            q_rated=q_rated,
            valve=np.minimum(valve, 1.0),
            shutoff_rise=jitter("shutoff_rise", 0.05),
            k_loss=jitter("loss_rated", 0.1) / q_rated**2,
            suction=jitter("suction", 0.03),
            k_suction=jitter("suction_loss_rated", 0.1) / q_rated**2,
            efficiency=jitter("efficiency", 0.04),
            no_load_current=jitter("no_load_current", 0.1),
            cable_ohm=jitter("cable_ohm", 0.1),
            vib_base=jitter("vib_base", 0.15),
            vib_speed=jitter("vib_speed", 0.15),
            bearing_rise=jitter("bearing_rise", 0.1),
            process_temp=rng.uniform(30.0, 45.0, n),
            tau_bearing=np.array([s.tau_bearing for s in specs]),
            tau_fluid=np.array([s.tau_fluid for s in specs]),
            noise=np.array([s.noise for s in specs], dtype=np.float64),
            tank_phase=rng.uniform(0.0, 2 * np.pi, n),
        )


def ambient_temp(epoch_s: F64) -> F64:
    """Outdoor temperature: a 24 h sinusoid, coldest at 03:00 UTC, warmest at 15:00."""
    hours = (epoch_s / 3600.0) % 24.0
    out: F64 = 12.0 + 6.0 * np.sin(2 * np.pi * (hours - 9.0) / 24.0)
    return out


def bus_voltage(epoch_s: F64) -> F64:
    """Supply bus voltage, shared by all motors: nominal with slow swings under grid load."""
    out: F64 = V_NOMINAL * (
        1.0
        + 0.006 * np.sin(2 * np.pi * epoch_s / 86_400.0)
        + 0.003 * np.sin(2 * np.pi * epoch_s / 5_400.0 + 1.0)
    )
    return out


class Schedule:
    """One asset's operating modes, drawn lazily from its own random stream.

    A segment holds a speed target from ``seg_start``; the speed ramps to it at a fixed rate.
    Stops never overlap a planned fault window (a stopped machine shows no fault), and
    ``cuts`` force a setpoint change at given steps so a stuck sensor has something to miss.
    """

    def __init__(
        self,
        spec: KindSpec,
        interval_s: float,
        rng: np.random.Generator,
        busy: list[tuple[int, int]],
        cuts: list[int],
    ) -> None:
        self._spec = spec
        self._dt = interval_s
        self._rng = rng
        self._busy = busy
        self._cuts = sorted(cuts)
        self._ramp = spec.ramp_per_s * interval_s
        self.target = float(rng.choice(spec.setpoints))
        self.seg_start = 0
        self.seg_speed = self.target  # speed at seg_start; starts in steady state
        self.seg_end = self._hold_end(0, spec.hold_s)

    def speeds(self, first: int, count: int) -> F64:
        """Speed fraction for steps ``first .. first + count - 1``; calls must be consecutive."""
        out = np.empty(count, dtype=np.float64)
        pos = first
        end = first + count
        while pos < end:
            stop = min(end, self.seg_end)
            k = np.arange(pos, stop, dtype=np.float64) - self.seg_start
            gap = self.target - self.seg_speed
            out[pos - first : stop - first] = self.seg_speed + np.sign(gap) * np.minimum(
                k * self._ramp, abs(gap)
            )
            pos = stop
            if pos == self.seg_end:
                self._next_segment()
        return out

    def _speed_at(self, step: int) -> float:
        gap = self.target - self.seg_speed
        return self.seg_speed + float(np.sign(gap)) * min(
            (step - self.seg_start) * self._ramp, abs(gap)
        )

    def _next_segment(self) -> None:
        spec = self._spec
        start = self.seg_end
        speed = self._speed_at(start)
        stopped = self.target == 0.0
        want_stop = not stopped and self._rng.uniform() < spec.p_stop
        if want_stop:
            end = self._hold_end(start, spec.stop_s)
            restart = end + int(np.ceil(1.0 / self._ramp)) + 1
            # The ramp down starts now and the ramp up ends after ``end``: keep both clear.
            if any(s - 1 <= restart and start <= e for s, e in self._busy):
                want_stop = False
        if want_stop:
            self.target = 0.0
        else:
            choices = [s for s in spec.setpoints if s != self.target]
            self.target = float(self._rng.choice(choices))
            end = self._hold_end(start, spec.hold_s)
        self.seg_start, self.seg_speed, self.seg_end = start, speed, end

    def _hold_end(self, start: int, span_s: tuple[float, float]) -> int:
        end = start + max(1, int(self._rng.uniform(*span_s) / self._dt))
        for cut in self._cuts:
            if start < cut < end:
                return cut
        return end


class ThermalLag:
    """First-order lags y[k] = d*y[k-1] + (1-d)*u[k] for each asset, d = exp(-dt/tau).

    Vectorised over time with a lower-triangular Toeplitz kernel applied to fixed sub-blocks of
    ``L`` steps; only the short carry between sub-blocks is sequential.
    """

    L = 64

    def __init__(self, tau_s: F64, interval_s: float, initial: F64) -> None:
        d = np.exp(-interval_s / tau_s)  # [assets]
        lag = np.arange(self.L)[:, None] - np.arange(self.L)[None, :]  # k - j
        powers = d[:, None, None] ** np.maximum(lag, 0)[None]
        self._kernel: F64 = np.where(lag[None] >= 0, (1.0 - d)[:, None, None] * powers, 0.0)
        self._carry_gain: F64 = d[None, :] ** np.arange(1, self.L + 1)[:, None]  # [L, assets]
        self.state: F64 = initial.astype(np.float64, copy=True)

    def step(self, u: F64) -> F64:
        """Filter inputs ``u`` [steps, assets] continuing from the carried state."""
        steps, n = u.shape
        blocks = -(-steps // self.L)
        padded = np.zeros((blocks * self.L, n))
        padded[:steps] = u
        # [assets, L, blocks]: one batched matmul does every sub-block at once.
        local = self._kernel @ padded.reshape(blocks, self.L, n).transpose(2, 1, 0)
        local = local.transpose(2, 1, 0)  # [blocks, L, assets]
        out = np.empty_like(local)
        carry = self.state
        for b in range(blocks):
            out[b] = local[b] + self._carry_gain * carry
            carry = out[b, -1]
        flat = out.reshape(-1, n)[:steps]
        self.state = flat[-1].copy()
        return flat
