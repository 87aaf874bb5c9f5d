"""The optional C extension ``monitor._speedups``, typed; ``speedups`` is None without it.

It holds two hot loops of the data path: parsing runs of JSON reading messages straight into
columns (:meth:`monitor.records.Decoder.decode_many`) and gathering windows out of the
window store (:func:`monitor.windows._gather`). Both callers keep a pure-Python path with the
same results, used when the extension did not build (no C compiler at install time) or when
``PLANTWATCH_NO_SPEEDUPS=1`` is set; the test suite compares the two and fails if the
extension is missing where it should have been built.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Sequence
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
