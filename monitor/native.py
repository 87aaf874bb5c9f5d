"""The optional C extension ``monitor._speedups``, typed; ``speedups`` is None without it.

It holds the hot loops of the data path: parsing runs of JSON and binary reading messages
straight into columns (:meth:`monitor.records.Decoder.decode_many`), appending readings of many
assets to the window store (:meth:`monitor.windows.WindowStore.append_many`) and gathering
windows out of it (:func:`monitor.windows._gather`). All callers keep a pure-Python path with
the same results, used when the extension did not build (no C compiler at install time) or when
``PLANTWATCH_NO_SPEEDUPS=1`` is set; the test suite compares the two and fails if the
extension is missing where it should have been built.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Final, Protocol, cast

import numpy as np
import numpy.typing as npt

log = logging.getLogger(__name__)


class Speedups(Protocol):
    def parse_json_run(
        self,
        values: Sequence[bytes],
        features: tuple[str, ...],
        allow_extra: bool,
        max_batch: int,
        /,
    ) -> tuple[list[str], bytearray, bytearray, list[int] | None] | None:
        """Assets (one str per reading), int64 timestamps and float32 rows [n, F] as native
        byte arrays, and readings per message when any message is a list; None where the run
        is not provably valid (the caller then takes its Python path)."""
        ...

    def message_runs(
        self, values: Sequence[bytes | None], max_bytes: int, binary: bool, /
    ) -> list[tuple[int, int, int]]:
        """Maximal runs ``(kind, start, end)``: 1 JSON (``{`` or ``[`` first, at most
        ``max_bytes``), 2 binary (the magic first, if ``binary``), 0 anything else."""
        ...

    def parse_binary_run(
        self,
        values: Sequence[bytes | None],
        n_features: int,
        fingerprint: int,
        max_batch: int,
        max_asset_bytes: int,
        max_bytes: int,
        ts_min: int,
        ts_max: int,
        /,
    ) -> tuple[list[str], list[str], bytearray, bytearray, list[int]] | None:
        """The asset of each message and of each reading, int64 timestamps and float32 rows
        [n, F] as native byte arrays, and readings per message; None where the run is not
        provably valid (the caller then decodes message by message)."""
        ...

    def gather_windows(
        self,
        seq: npt.NDArray[np.float32],
        starts: npt.NDArray[np.intp],
        length: int,
        out: npt.NDArray[np.float32],
        /,
    ) -> None:
        """``out[k] = seq[starts[k] : starts[k] + length]``, one memcpy per window."""
        ...

    def append_readings(
        self,
        assets: list[str],
        index: Mapping[str, int],
        ts: npt.NDArray[np.int64],
        values: npt.NDArray[np.float32],
        offsets: npt.NDArray[np.int64],
        slabs: list[tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]],
        state: tuple[npt.NDArray[np.int64], ...],
        pending: tuple[npt.NDArray[np.generic], ...],
        ready: npt.NDArray[np.intp],
        slots: npt.NDArray[np.intp],
        gap: npt.NDArray[np.bool_],
        stride: int,
        max_step: int,
        partition: int,
        seen_mark: int,
        names: list[str],
        /,
    ) -> tuple[int, int] | int | None:
        """The no-gap core of :meth:`monitor.windows.WindowStore.append_many`: windows made
        ready (their assets appended to ``names``) and readings of assets with a gap, which
        are marked in ``gap`` and left to the caller; -1 if a reading is not after its asset's
        previous one, -2 if ``pending`` has room for fewer windows than readings, None if an
        asset is not in ``index`` (nothing changed in these three cases)."""
        ...


def _load() -> Speedups | None:
    if os.environ.get("PLANTWATCH_NO_SPEEDUPS") == "1":
        return None
    try:
        module = importlib.import_module("monitor._speedups")
    except ImportError:
        return None
    return cast("Speedups", module)


speedups: Final = _load()


def describe() -> str:
    """One line for the service's start-up log."""
    if speedups is not None:
        return "native speedups: on (monitor._speedups)"
    if os.environ.get("PLANTWATCH_NO_SPEEDUPS") == "1":
        return "native speedups: off (PLANTWATCH_NO_SPEEDUPS=1)"
    return (
        "native speedups: off (monitor._speedups did not build; JSON decoding is several "
        "times slower; reinstall with a C compiler)"
    )
