"""The wire formats of sensor readings on Kafka: encoders for producers, a validating decoder.

The Kafka key of every message is the asset id (UTF-8); it may be absent. Three value formats:

**JSON single** -- one reading::

    {"asset": "pump-7", "ts": 1767225600000, "values": {"flow": 1.2, "vibration_rms": 0.3}}

``ts`` is epoch milliseconds (an integer) or an ISO-8601 string *with* a UTC offset
(``"2026-01-01T00:00:00.250Z"``; sub-millisecond digits are truncated). ``values`` is an object
keyed by sensor name, or a list in manifest feature order. Other top-level fields are ignored.

**JSON batch** -- a JSON list of such objects in one message; readings may belong to several
assets. Messages must be UTF-8; ``NaN``/``Infinity`` literals parse but are rejected.

**Binary** (version 1) -- one asset, little-endian, every field naturally aligned::

    offset     size     type       field
    0          3        bytes      magic b"PWR"
    3          1        u8         version = 1
    4          4        u32        schema fingerprint (below)
    8          4        u32        n_readings (n)
    12         2        u16        n_features (f), must equal the model's feature count
    14         2        u16        asset_len (L), 1..max_asset_id_length
    16         L        utf-8      asset id
    16+L       P        zero       padding, P = (8 - (16 + L) % 8) % 8 bytes, all 0x00
    H=16+L+P   8*n      int64      timestamps, epoch ms, strictly increasing
    H+8*n      4*n*f    float32    values, row-major [n, f], manifest feature order

The message is exactly ``H + 8*n + 4*n*f`` bytes; trailing bytes are an error. The schema
fingerprint is the first 4 bytes of ``sha256("\\x1f".join(features).encode("utf-8"))``, written
in digest order (so a C gateway can ``memcpy`` them); read as a little-endian u32 it equals
:func:`schema_fingerprint`. A producer built for another feature list or order is rejected.

**Decoding policy.** :class:`Decoder` accepts or rejects a message *whole*: it returns either
one :class:`ReadingBlock` per asset (order of first appearance; an empty batch gives ``[]``) or
one :class:`Rejection` whose :class:`RejectReason` is a bounded label and whose detail names the
first bad reading (``"reading 3: sensor 'flow' is nan, ..."``). It never raises for any key/value
bytes, and checks every declared length against the real message size and the configured limits
before allocating anything proportional to it. Reasons:

- ``undecodable``: tombstone, not JSON/UTF-8, neither JSON nor binary, bad binary framing
  (short, wrong magic/version, size not exactly as declared, non-zero padding), key not UTF-8.
- ``oversized``: message, batch length or asset id beyond the configured limits.
- ``wrong_type``: a field missing or of the wrong JSON type (``ts`` must be an integer or a
  string; booleans, strings and nulls are not sensor values); an empty asset id.
- ``missing_sensor`` / ``unknown_sensor``: ``values`` object without a model sensor / with one
  the model does not know (ignored instead with ``allow_extra_sensors``).
- ``schema_mismatch``: binary fingerprint or feature count differ, or a ``values`` list of the
  wrong length.
- ``non_finite``: NaN, ±inf, or beyond float32's range.
- ``unknown_asset``: not matched by ``asset_patterns``, or containing unprintable characters.
- ``bad_timestamp``: epoch ms outside [1e11, 1e13], unparseable ISO-8601, or ISO without offset.
- ``key_mismatch``: the reading's asset differs from a (non-empty) Kafka key.
- ``out_of_order``: timestamps of one asset not strictly increasing within the message.
"""

from __future__ import annotations

import contextlib
import fnmatch
import gc
import hashlib
import json
import logging
import math
import re
import struct
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from itertools import chain, repeat
from operator import eq, itemgetter
from typing import Any, Final, Literal, NamedTuple, cast

import numpy as np
import numpy.typing as npt
import orjson

from monitor import native
from monitor.errors import ConfigError, DataError

log = logging.getLogger(__name__)

#: Binary format constants (see the module docstring).
BINARY_MAGIC: Final = b"PWR"
BINARY_VERSION: Final = 1
_HEADER = struct.Struct("<3sBIIHH")
_TS_DTYPE: Final = np.dtype("<i8")
_VALUE_DTYPE: Final = np.dtype("<f4")

#: Plausible epoch-millisecond range (1973-03-03 .. 2286-11-20): catches seconds, microseconds
#: and garbage, not clock skew (the window store judges that).
TS_MIN_MS: Final = 100_000_000_000
TS_MAX_MS: Final = 10_000_000_000_000

_F32_MAX: Final = float(np.finfo(np.float32).max)
_NUMBER_TYPES: Final = frozenset({int, float})  # bool is its own type, so not a number here
_JSON_WS: Final = b" \t\r\n"
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MAX_DETAIL: Final = 300
_MAX_ISO_LENGTH: Final = 64
_ASSET_CACHE_SIZE: Final = 4096
#: Keys, and (key, asset) pairs, remembered as having passed (see Decoder._assets_ok).
_PASSED_CACHE_SIZE: Final = 65536
#: Runs of JSON messages at most this long are decoded one by one (see Decoder.decode_many).
_FAST_MIN_RUN: Final = 4
#: Kinds of message runs (Decoder._runs).
_OTHER_RUN, _JSON_RUN, _BINARY_RUN = 0, 1, 2


class Reading(NamedTuple):
    """One asset's sensor values at one instant."""

    asset: str
    ts_ms: int  # epoch milliseconds, UTC
    values: Mapping[str, float]


class RejectReason(StrEnum):
    """Why a message was rejected; a bounded set (Prometheus label, dead-letter field)."""

    UNDECODABLE = "undecodable"
    OVERSIZED = "oversized"
    WRONG_TYPE = "wrong_type"
    MISSING_SENSOR = "missing_sensor"
    UNKNOWN_SENSOR = "unknown_sensor"
    NON_FINITE = "non_finite"
    UNKNOWN_ASSET = "unknown_asset"
    BAD_TIMESTAMP = "bad_timestamp"
    KEY_MISMATCH = "key_mismatch"
    SCHEMA_MISMATCH = "schema_mismatch"
    OUT_OF_ORDER = "out_of_order"
    DUPLICATE_TIMESTAMP = "duplicate_timestamp"  # used by the window store, across messages


@dataclass(frozen=True, slots=True)
class ReadingBlock:
    """Readings of ONE asset decoded from one message, in strictly increasing timestamp order.

    The arrays are read-only (binary messages are decoded without copying).
    """

    asset: str
    ts_ms: npt.NDArray[np.int64]  # [n]
    values: npt.NDArray[np.float32]  # [n, n_features], manifest feature order


@dataclass(frozen=True, slots=True)
class Rejection:
    """A rejected message: a bounded reason and a one-line, truncated, human-readable detail."""

    reason: RejectReason
    detail: str
    #: All of it for one asset that ``other_asset_patterns`` match (another service's): the
    #: service counts and skips it instead of dead-lettering it.
    other_asset: bool = False
    #: Refused for naming an asset another service or route owns (all of the message, as
    #: ``other_asset`` says, or a reading of a batch): with routes, another route's reason for
    #: the same message is the better one to report.
    names_other: bool = False


@dataclass(frozen=True, slots=True)
class DecodedBatch:
    """The readings of many messages in flat arrays, as :meth:`Decoder.decode_many` returns them.

    Reading ``i`` belongs to ``assets[i]`` and to message ``messages[i]`` (non-decreasing); a
    message's readings are contiguous and appear as :meth:`Decoder.decode` returns them (its
    blocks in order). Rejected messages contribute no readings and one entry in ``rejections``.
    """

    assets: list[str]  # [n]
    ts_ms: npt.NDArray[np.int64]  # [n]
    values: npt.NDArray[np.float32]  # [n, n_features]
    messages: npt.NDArray[np.intp]  # [n]
    rejections: list[tuple[int, Rejection]]  # (message index, rejection), in message order

    def __len__(self) -> int:
        return len(self.assets)

    def blocks(self, message: int) -> list[ReadingBlock]:
        """The blocks :meth:`Decoder.decode` returns for an accepted ``message``."""
        lo = int(np.searchsorted(self.messages, message, side="left"))
        hi = int(np.searchsorted(self.messages, message, side="right"))
        names = self.assets[lo:hi]
        if len(set(names)) <= 1:
            return [ReadingBlock(names[0], self.ts_ms[lo:hi], self.values[lo:hi])] if names else []
        groups: dict[str, list[int]] = {}
        for j, name in enumerate(names, lo):
            groups.setdefault(name, []).append(j)
        return [
            ReadingBlock(name, self.ts_ms[rows], self.values[rows])
            for name, rows in ((a, np.array(r, dtype=np.intp)) for a, r in groups.items())
        ]


@dataclass(frozen=True)
class DecoderConfig:
    """What the decoder accepts; ``features`` is the model manifest's feature order."""

    features: tuple[str, ...]
    #: auto: JSON if the first non-whitespace byte is ``{`` or ``[``, binary if the magic matches.
    format: Literal["auto", "json", "binary"] = "auto"
    asset_patterns: tuple[str, ...] = ()  # fnmatch patterns (case-sensitive); empty => any
    #: Assets ``asset_patterns`` leave out that another service owns (fnmatch, case-sensitive).
    other_asset_patterns: tuple[str, ...] = ()
    #: Assets another decoder of the same service takes first (an earlier route, see
    #: ``Settings.routes``): another's even where ``asset_patterns`` match them.
    claimed_patterns: tuple[str, ...] = ()
    max_message_bytes: int = 1_048_576
    max_batch_readings: int = 10_000
    max_asset_id_length: int = 128  # characters (JSON) or UTF-8 bytes (binary)
    allow_extra_sensors: bool = False  # True: unknown sensors are ignored instead of rejected


def asset_matcher(patterns: Sequence[str]) -> re.Pattern[str] | None:
    """One regex matching any of the fnmatch ``patterns`` (None for none: any asset)."""
    if not patterns:
        return None
    return re.compile("|".join(fnmatch.translate(p) for p in patterns))


class _Reject(Exception):  # noqa: N818 - internal control flow, never escapes the decoder
    """Raised inside the decoder; :meth:`Decoder.decode` turns it into a :class:`Rejection`."""

    def __init__(
        self,
        reason: RejectReason,
        detail: str,
        *,
        other_asset: bool = False,
        names_other: bool = False,
    ) -> None:
        super().__init__(detail)
        self.rejection = Rejection(reason, _clip(detail), other_asset, names_other)


def _json_loads(text: str) -> Any:
    """``json.loads`` whose outcome on deeply nested input does not depend on the caller.

    ``json.loads`` gives up on nesting deeper than the recursion limit *minus the caller's stack
    depth*, so the same message would be "not JSON" on one call path and decode (to then be
    rejected as a wrong type) on another (found by bench/fuzz_decoders.py). Such a message is
    parsed again on a fresh thread, whose stack is shallower than any caller's: the result is
    the same wherever the decoder is called from, and ordinary messages pay nothing.
    """
    try:
        return json.loads(text)
    except RecursionError:
        result: list[Any] = []
        error: list[BaseException] = []

        def parse() -> None:
            try:
                result.append(json.loads(text))
            except BaseException as exc:  # handed to the caller's thread
                error.append(exc)

        thread = threading.Thread(target=parse, name="plantwatch-json", daemon=True)
        thread.start()
        thread.join()
        if error:
            raise error[0] from None
        return result[0]


def _clip(text: str, limit: int = _MAX_DETAIL) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _show(text: str) -> str:
    """A message-supplied string, quoted, escaped to one line and shortened for a detail."""
    return _clip(repr(text), 80)


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return "a number"


def _at(index: int) -> str:
    """Detail prefix naming the reading: batches have indices, a single reading has none."""
    return f"reading {index}: " if index >= 0 else ""


def schema_fingerprint(features: Sequence[str]) -> int:
    """The binary format's u32 schema fingerprint of a feature list (order matters)."""
    digest = hashlib.sha256("\x1f".join(features).encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "little")


class Decoder:
    """Validates Kafka messages against a feature list; see the module docstring for policy."""

    def __init__(self, config: DecoderConfig) -> None:
        features = tuple(config.features)
        if not features:
            raise ConfigError("decoder: features must not be empty")
        if len(set(features)) != len(features):
            raise ConfigError("decoder: features contain duplicates")
        if len(features) > 0xFFFF:
            raise ConfigError(f"decoder: {len(features)} features, the binary format allows 65535")
        for name in ("max_message_bytes", "max_batch_readings", "max_asset_id_length"):
            if getattr(config, name) < 1:
                raise ConfigError(f"decoder: {name} must be >= 1")
        self.config = config
        self._features = features
        self._n = len(features)
        self._index = {name: i for i, name in enumerate(features)}
        self._feature_set = frozenset(features)
        # Builds a row in feature order from a values object in one C call.
        getter = itemgetter(*features)
        self._row: Callable[[dict[str, Any]], Sequence[float]] = (
            getter if self._n > 1 else (lambda d: (getter(d),))
        )
        self._fingerprint = schema_fingerprint(features)
        self._format = config.format
        self._max_bytes = config.max_message_bytes
        self._max_batch = config.max_batch_readings
        self._max_asset = config.max_asset_id_length
        self._allow_extra = config.allow_extra_sensors
        self._asset_re = asset_matcher(config.asset_patterns)
        self._other_re = asset_matcher(config.other_asset_patterns)
        self._claimed_re = asset_matcher(config.claimed_patterns)
        # Whether some asset is another's: messages keyed by one are then set aside unparsed.
        self._others = self._other_re is not None or self._claimed_re is not None
        # asset id -> None (allowed) or the rejection; asset ids repeat, regexes are not free.
        self._asset_cache: dict[str, _Reject | None] = {}
        # Keys and (key, asset) pairs that passed the fast path's checks: a run's pairs are
        # then checked in one set difference, not one by one.
        self._good_keys: set[bytes | None] = set()
        self._good_pairs: set[tuple[bytes | None, str]] = set()
        # With other_asset_patterns: message key -> the rejection of a message keyed by another
        # service's asset, or None for any other key.
        self._key_verdicts: dict[bytes | None, Rejection | None] = {}

    @property
    def features(self) -> tuple[str, ...]:
        return self._features

    def decode(self, key: bytes | None, value: bytes | None) -> list[ReadingBlock] | Rejection:
        """Decode one Kafka message into per-asset blocks, or say why it is rejected.

        A message keyed by an asset of ``other_asset_patterns`` (and not of ``asset_patterns``)
        is another service's: it is not parsed (that service checks it) and comes back as a
        rejection marked :attr:`Rejection.other_asset`.
        """
        if key and self._others:
            other = self._key_verdict(key)
            if other is not None:
                return other
        try:
            return self._decode(key, value)
        except _Reject as rejected:
            return rejected.rejection
        except Exception:  # a decoder bug must not stop the consume loop; the test suite
            # (tests/unit/test_records_fuzz.py) asserts this branch is never taken.
            log.exception("decoder failed on a %d-byte message", len(value or b""))
            return Rejection(RejectReason.UNDECODABLE, INTERNAL_ERROR_DETAIL)

    def decode_many(
        self, keys: Sequence[bytes | None], values: Sequence[bytes | None]
    ) -> DecodedBatch:
        """Decode a batch of messages at once; per message exactly what :meth:`decode` gives.

        Runs of JSON messages take a vectorised path: the C parser or one ``orjson`` parse per
        message, then column-wise type, range and asset checks over the whole run with no
        per-reading Python objects. Runs of binary messages are parsed by the C extension in one
        call, with keys and asset ids checked once per distinct pair. Those paths only ever
        *accept*: a run they cannot prove valid is split in halves and retried, down to single
        messages, which go through :meth:`decode` (so every rejection, and its detail, comes
        from the one reference decoder).
        """
        if len(keys) != len(values):
            raise ValueError(f"decode_many: {len(keys)} keys for {len(values)} values")
        # Other services' messages are left out unparsed, and the rest decoded as one batch: on
        # a shared topic they would otherwise make the fast paths decline and split every run.
        other = self._other_messages(keys) if self._others else {}
        if not other:
            return self._decode_all(keys, values)
        is_other = np.zeros(len(keys), dtype=bool)
        is_other[list(other)] = True
        own = np.flatnonzero(~is_other)
        own_list = own.tolist()
        mine = self._decode_all([keys[i] for i in own_list], [values[i] for i in own_list])
        rejections = [(own_list[i], r) for i, r in mine.rejections]
        rejections.extend(other.items())
        rejections.sort(key=itemgetter(0))
        return DecodedBatch(mine.assets, mine.ts_ms, mine.values, own[mine.messages], rejections)

    def _decode_all(
        self, keys: Sequence[bytes | None], values: Sequence[bytes | None]
    ) -> DecodedBatch:
        parts: list[_Part] = []
        rejections: list[tuple[int, Rejection]] = []
        # The binary fast path is the C parser's alone: without it, binary runs go one by one.
        fast: dict[int, _FastPath] = {_JSON_RUN: self._fast_json}
        if native.speedups is not None:
            fast[_BINARY_RUN] = self._fast_binary
        for kind, start, end in self._runs(values):
            run_fast = fast.get(kind)
            if run_fast is None:
                self._decode_each(keys, values, start, end, parts, rejections)
            else:
                self._decode_run(run_fast, keys, values, start, end, parts, rejections)
        return _join(parts, rejections, self._n)

    def _other_messages(self, keys: Sequence[bytes | None]) -> dict[int, Rejection]:
        """The messages keyed by another service's asset: index -> rejection."""
        verdicts = self._key_verdicts
        batch = set(keys)
        for key in batch - verdicts.keys():
            self._key_verdict(key)
        # (A key forgotten by a full cache meanwhile reads as none here: its messages then go
        # through decode(), which sets them aside the same way.)
        if not any(map(verdicts.get, batch)):
            return {}
        return {i: r for i, r in enumerate(map(verdicts.get, keys)) if r is not None}

    def _key_verdict(self, key: bytes | None) -> Rejection | None:
        """The rejection of a message keyed by ``key`` if that names an asset of
        ``other_asset_patterns`` which ``asset_patterns`` leave out, else None (remembered)."""
        try:
            return self._key_verdicts[key]
        except KeyError:
            pass
        verdict = None
        if key:
            try:
                asset = key.decode("utf-8")
            except UnicodeDecodeError:
                asset = ""
            if asset and len(asset) <= self._max_asset:
                judged = self._asset_verdict(asset)
                if judged is not None and judged.rejection.other_asset:
                    verdict = judged.rejection
        if len(self._key_verdicts) >= _ASSET_CACHE_SIZE:
            self._key_verdicts.clear()  # bounded against floods of distinct bogus keys
        self._key_verdicts[key] = verdict
        return verdict

    def _asset_verdict(self, asset: str) -> _Reject | None:
        """:meth:`_judge_asset`, remembered per asset id (bounded)."""
        try:
            return self._asset_cache[asset]
        except KeyError:
            pass
        verdict = self._judge_asset(asset)
        if len(self._asset_cache) >= _ASSET_CACHE_SIZE:
            self._asset_cache.clear()  # bounded against floods of distinct bogus ids
        self._asset_cache[asset] = verdict
        return verdict

    def _runs(self, values: Sequence[bytes | None]) -> list[tuple[int, int, int]]:
        """Maximal runs ``(kind, start, end)`` of messages a fast path may take: JSON ones,
        binary ones (formats auto and binary), and the others."""
        if self._format == "binary":  # every message is binary or rejected by decode()
            return [(_BINARY_RUN, 0, len(values))] if values else []
        limit, auto = self._max_bytes, self._format == "auto"
        if native.speedups is not None:
            return native.speedups.message_runs(values, limit, auto)
        kinds = [
            _OTHER_RUN
            if v is None or len(v) > limit
            else _JSON_RUN
            if v[:1] == b"{" or v[:1] == b"["
            else _BINARY_RUN
            if auto and v[:3] == BINARY_MAGIC
            else _OTHER_RUN
            for v in values
        ]
        runs = []
        start = 0
        for end in range(1, len(kinds) + 1):
            if end == len(kinds) or kinds[end] != kinds[start]:
                runs.append((kinds[start], start, end))
                start = end
        return runs

    def _decode_each(
        self,
        keys: Sequence[bytes | None],
        values: Sequence[bytes | None],
        lo: int,
        hi: int,
        parts: list[_Part],
        rejections: list[tuple[int, Rejection]],
    ) -> None:
        for i in range(lo, hi):
            decoded = self.decode(keys[i], values[i])
            if isinstance(decoded, Rejection):
                rejections.append((i, decoded))
                continue
            for block in decoded:
                k = len(block.ts_ms)
                parts.append(
                    ([block.asset] * k, block.ts_ms, block.values, np.full(k, i, dtype=np.intp))
                )

    def _decode_run(
        self,
        fast: _FastPath,
        keys: Sequence[bytes | None],
        values: Sequence[bytes | None],
        lo: int,
        hi: int,
        parts: list[_Part],
        rejections: list[tuple[int, Rejection]],
    ) -> None:
        """Messages ``lo:hi`` through ``fast``, which accepts a run only if all of it is
        valid; a run it declines is split in halves, down to single messages for decode()."""
        if hi - lo <= _FAST_MIN_RUN:
            self._decode_each(keys, values, lo, hi, parts, rejections)
            return
        with _gc_paused():
            part = fast(keys[lo:hi], values[lo:hi], lo)
        if part is not None:
            parts.append(part)
            return
        mid = (lo + hi) // 2
        self._decode_run(fast, keys, values, lo, mid, parts, rejections)
        self._decode_run(fast, keys, values, mid, hi, parts, rejections)

    def _fast_binary(
        self, keys: Sequence[bytes | None], values: Sequence[bytes | None], base: int
    ) -> _Part | None:
        """Readings of binary messages that are all valid, or None if any might not be. The C
        parser checks the framing, UTF-8 of the asset ids, timestamps and values exactly as
        :meth:`_decode_binary` does; keys and the asset rules are checked here once per
        distinct (key, asset) pair."""
        assert native.speedups is not None  # decode_many takes this path only with it
        parsed = native.speedups.parse_binary_run(
            values,
            self._n,
            self._fingerprint,
            self._max_batch,
            self._max_asset,
            self._max_bytes,
            TS_MIN_MS,
            TS_MAX_MS,
        )
        if parsed is None:
            return None
        message_assets, assets, ts_bytes, value_bytes, counts = parsed
        if not (self._keys_ok(keys) and self._assets_ok(keys, message_assets)):
            return None
        messages = np.repeat(np.arange(base, base + len(keys), dtype=np.intp), counts)
        return (
            assets,
            np.frombuffer(ts_bytes, dtype=np.int64),
            np.frombuffer(value_bytes, dtype=np.float32).reshape(-1, self._n),
            messages,
        )

    def _fast_json(
        self, keys: Sequence[bytes | None], maybe_values: Sequence[bytes | None], base: int
    ) -> _Part | None:
        """Readings of JSON messages that are all valid, or None if any might not be.

        Accepts a subset of what :meth:`decode` accepts, with identical results. The C parser
        (:mod:`monitor.native`) goes first: it proves messages well-formed byte by byte (strict
        UTF-8, JSON grammar, each field once, every sensor once, numbers correctly rounded as
        ``float()`` does, within float32's range) and gives up on anything else -- escapes in
        keys or asset ids, duplicate keys, floats as timestamps. Then orjson, which parses a
        subset of what ``json`` parses (no NaN/Infinity literals, no lone surrogates) to the
        same objects, except that integers beyond 64 bits become floats -- refused below as
        timestamps, and as sensor values converted to the same float64 either way. What is left
        (keys, timestamp range, asset ids, order within batches) is checked column-wise by
        :meth:`_checked` for both.
        """
        values = cast("Sequence[bytes]", maybe_values)  # eligible runs hold no tombstones
        if native.speedups is not None:
            parsed = native.speedups.parse_json_run(
                values, self._features, self._allow_extra, self._max_batch
            )
            if parsed is not None:
                assets_, ts_bytes, value_bytes, counts_ = parsed
                return self._checked(
                    keys,
                    assets_,
                    np.frombuffer(ts_bytes, dtype=np.int64),
                    np.frombuffer(value_bytes, dtype=np.float32).reshape(-1, self._n),
                    counts_,
                    base,
                )
        try:
            docs = list(map(orjson.loads, values))
        except orjson.JSONDecodeError:
            return None
        kinds = set(map(type, docs))
        counts: list[int] | None = None
        if kinds == {dict}:
            items: list[Any] = docs
        elif kinds <= {dict, list}:
            counts = [len(d) if type(d) is list else 1 for d in docs]
            if max(counts) > self._max_batch:
                return None
            items = list(chain.from_iterable(d if type(d) is list else (d,) for d in docs))
            if set(map(type, items)) - {dict}:
                return None
        else:
            return None
        if not items:
            return _empty_part(self._n) if self._keys_ok(keys) else None
        assets: list[Any] = list(map(dict.get, items, repeat("asset")))
        ts_list = list(map(dict.get, items, repeat("ts")))
        rows: list[Any] = list(map(dict.get, items, repeat("values")))
        if set(map(type, assets)) != {str} or set(map(type, ts_list)) != {int}:
            return None
        value_kinds = set(map(type, rows))
        if value_kinds == {list}:
            if set(map(len, rows)) != {self._n}:
                return None
        elif value_kinds == {dict}:
            if not all(map(eq, map(dict.keys, rows), repeat(self._feature_set))):
                return None
            rows = list(map(self._row, rows))
        else:
            return None
        if not _NUMBER_TYPES.issuperset(map(type, chain.from_iterable(rows))):
            return None
        try:
            wide = np.array(rows, dtype=np.float64)
            ts = np.array(ts_list, dtype=np.int64)
        except (OverflowError, ValueError):
            return None
        if not bool((np.abs(wide) <= _F32_MAX).all()):  # NaN compares False
            return None
        return self._checked(keys, assets, ts, wide.astype(np.float32), counts, base)

    def _checked(
        self,
        keys: Sequence[bytes | None],
        assets: list[str],
        ts: npt.NDArray[np.int64],
        values: npt.NDArray[np.float32],
        counts: list[int] | None,
        base: int,
    ) -> _Part | None:
        """The parsed readings of a run of messages (``counts`` readings each, or one each
        if None) once their keys, timestamps and assets pass, in message order; else None."""
        if not self._keys_ok(keys):
            return None
        if not assets:
            return _empty_part(self._n)
        if int(ts.min()) < TS_MIN_MS or int(ts.max()) > TS_MAX_MS:
            return None
        item_keys = keys if counts is None else list(chain.from_iterable(map(repeat, keys, counts)))
        if not self._assets_ok(item_keys, assets):
            return None
        first = np.arange(base, base + len(keys), dtype=np.intp)
        if counts is None:
            return assets, ts, values, first
        messages = np.repeat(first, counts)
        order = _batch_order(assets, ts, messages)
        if order is None:
            return None
        if bool((order[1:] < order[:-1]).any()):  # some message interleaves assets
            assets = [assets[j] for j in order.tolist()]
            ts, values, messages = ts[order], values[order], messages[order]
        return assets, ts, values, messages

    def _keys_ok(self, keys: Sequence[bytes | None]) -> bool:
        """Whether every key is UTF-8 (decode() checks a key even if its message is empty)."""
        fresh = set(keys) - self._good_keys
        try:
            for key in fresh:
                if key:
                    key.decode("utf-8")
        except UnicodeDecodeError:
            return False
        _remember(self._good_keys, fresh)
        return True

    def _assets_ok(self, keys: Sequence[bytes | None], assets: list[str]) -> bool:
        """Whether every (key, asset) pair passes :meth:`_check_asset`."""
        fresh = set(zip(keys, assets, strict=True)) - self._good_pairs
        if not fresh:
            return True
        for key, asset in fresh:
            if key:
                try:
                    if key.decode("utf-8") != asset:
                        return False
                except UnicodeDecodeError:
                    return False
            if len(asset) > self._max_asset:
                return False
            if self._asset_verdict(asset) is not None:
                return False
        _remember(self._good_pairs, fresh)
        return True

    # -- framing ------------------------------------------------------------------------------

    def _decode(self, key: bytes | None, value: bytes | None) -> list[ReadingBlock]:
        if value is None:
            raise _Reject(RejectReason.UNDECODABLE, "tombstone (message without value)")
        if len(value) > self._max_bytes:
            raise _Reject(
                RejectReason.OVERSIZED,
                f"message is {len(value)} bytes, limit {self._max_bytes}",
            )
        key_str: str | None = None
        if key:  # an empty key counts as none
            try:
                key_str = key.decode("utf-8")
            except UnicodeDecodeError:
                raise _Reject(RejectReason.UNDECODABLE, "key is not valid UTF-8") from None
        fmt = self._format
        if fmt == "auto":
            first = value[:1]
            if first in _JSON_WS:
                first = value.lstrip(_JSON_WS)[:1]
            if first == b"{" or first == b"[":
                fmt = "json"
            elif value.startswith(BINARY_MAGIC):
                fmt = "binary"
            else:
                raise _Reject(
                    RejectReason.UNDECODABLE,
                    "neither JSON (starts with '{' or '[') nor binary (magic b'PWR')",
                )
        if fmt == "json":
            return self._decode_json(key_str, value)
        return self._decode_binary(key_str, value)

    def _check_asset(self, asset: str, key: str | None, where: int) -> None:
        if key is not None and asset != key:
            raise _Reject(
                RejectReason.KEY_MISMATCH,
                f"{_at(where)}asset {_show(asset)} differs from the message key {_show(key)}",
            )
        if len(asset) > self._max_asset:  # before the cache: never keep huge bogus ids
            raise _Reject(
                RejectReason.OVERSIZED,
                f"{_at(where)}asset id is {len(asset)} characters, limit {self._max_asset}",
            )
        cached = self._asset_verdict(asset)
        if cached is None:
            return
        # The cached detail has no reading index; re-raise with this one. Another service's
        # asset marks the message only where the asset is the message's own (a single reading,
        # a binary header: ``where`` < 0); keyed ones were set aside by decode() already.
        raise _Reject(
            cached.rejection.reason,
            _at(where) + cached.rejection.detail,
            other_asset=cached.rejection.other_asset and where < 0,
            names_other=cached.rejection.names_other,
        )

    def _judge_asset(self, asset: str) -> _Reject | None:
        if not asset:
            return _Reject(RejectReason.WRONG_TYPE, "asset id is empty")
        # Asset ids end up in logs, alert keys and label values: no control characters or lone
        # surrogates (which could not even be encoded back to UTF-8).
        if not asset.isprintable():
            return _Reject(
                RejectReason.UNKNOWN_ASSET, f"asset id {_show(asset)} has unprintable characters"
            )
        mine = self._asset_re is None or self._asset_re.match(asset) is not None
        whose = None
        if self._claimed_re is not None and self._claimed_re.match(asset) is not None:
            whose = "another route's (an earlier route's asset_patterns)"
        elif not mine and self._other_re is not None and self._other_re.match(asset) is not None:
            whose = "another service's or route's (other_asset_patterns)"
        if whose is not None:
            return _Reject(
                RejectReason.UNKNOWN_ASSET,
                f"asset {_show(asset)} is {whose}",
                other_asset=True,
                names_other=True,
            )
        if not mine:
            return _Reject(
                RejectReason.UNKNOWN_ASSET,
                f"asset {_show(asset)} is not allowed by the configured asset patterns",
            )
        return None

    # -- JSON ---------------------------------------------------------------------------------

    def _decode_json(self, key: str | None, value: bytes) -> list[ReadingBlock]:
        try:
            # Decode explicitly: json.loads(bytes) would also accept UTF-16/32 and surrogates.
            doc = _json_loads(value.decode("utf-8"))
        except UnicodeDecodeError:
            raise _Reject(RejectReason.UNDECODABLE, "message is not valid UTF-8") from None
        except (ValueError, RecursionError) as exc:
            raise _Reject(RejectReason.UNDECODABLE, f"not JSON: {exc}") from None
        if type(doc) is dict:
            asset, ts, row = self._parse_reading(doc, -1, key)
            self._check_values([row], indexed=False)
            values = np.fromiter(row, np.float32, self._n).reshape(1, self._n)
            return [_block(asset, np.array((ts,), dtype=np.int64), values)]
        if type(doc) is not list:
            raise _Reject(
                RejectReason.WRONG_TYPE,
                f"message is {_json_type(doc)}, not a reading object or a list of them",
            )
        if len(doc) > self._max_batch:
            raise _Reject(
                RejectReason.OVERSIZED,
                f"batch has {len(doc)} readings, limit {self._max_batch}",
            )
        return self._decode_batch(doc, key)

    def _decode_batch(self, items: list[Any], key: str | None) -> list[ReadingBlock]:
        ts_list: list[int] = []
        rows: list[Sequence[float]] = []
        groups: dict[str, list[int]] = {}  # asset -> reading indices
        last_ts: dict[str, int] = {}
        try:
            for i, item in enumerate(items):
                asset, ts, row = self._parse_reading(item, i, key)
                previous = last_ts.get(asset)
                if previous is None:
                    groups[asset] = [i]
                elif ts > previous:
                    groups[asset].append(i)
                else:
                    relation = "equals" if ts == previous else "is before"
                    raise _Reject(
                        RejectReason.OUT_OF_ORDER,
                        f"reading {i}: ts {ts} {relation} the previous reading of "
                        f"{_show(asset)} in this message ({previous})",
                    )
                last_ts[asset] = ts
                ts_list.append(ts)
                rows.append(row)
        except _Reject:
            # A non-finite value in an earlier reading is the first bad reading.
            if rows:
                self._to_float32(rows)
            raise
        if not rows:
            return []
        values = self._to_float32(rows)
        ts_all = np.array(ts_list, dtype=np.int64)
        if len(groups) == 1:
            return [_block(next(iter(groups)), ts_all, values)]
        blocks = []
        for asset, indices in groups.items():
            take = np.array(indices, dtype=np.intp)
            blocks.append(_block(asset, ts_all[take], values[take]))
        return blocks

    def _parse_reading(
        self, item: Any, i: int, key: str | None
    ) -> tuple[str, int, Sequence[float]]:
        """Validate one reading object; returns (asset, ts_ms, row in feature order)."""
        if type(item) is not dict:
            raise _Reject(
                RejectReason.WRONG_TYPE, f"{_at(i)}is {_json_type(item)}, not a reading object"
            )
        asset = item.get("asset")
        if type(asset) is not str:
            what = "missing" if asset is None else f"{_json_type(asset)}, not a string"
            raise _Reject(RejectReason.WRONG_TYPE, f"{_at(i)}'asset' is {what}")
        self._check_asset(asset, key, i)

        ts = item.get("ts")
        if type(ts) is int:
            if not TS_MIN_MS <= ts <= TS_MAX_MS:
                raise _Reject(
                    RejectReason.BAD_TIMESTAMP,
                    f"{_at(i)}ts {ts} is not epoch milliseconds in [{TS_MIN_MS}, {TS_MAX_MS}]",
                )
        elif type(ts) is str:
            ts = _iso_to_ms(ts, i)
        else:
            what = "missing" if ts is None else f"{_json_type(ts)}, not an integer or string"
            raise _Reject(RejectReason.WRONG_TYPE, f"{_at(i)}'ts' is {what}")

        values = item.get("values")
        if type(values) is dict:
            # Fast path: exactly the expected sensors, all numbers -- two C-level checks.
            if values.keys() == self._feature_set and _NUMBER_TYPES.issuperset(
                map(type, values.values())
            ):
                return asset, ts, self._row(values)
            return asset, ts, self._row_from_object(values, i)
        if type(values) is list:
            if len(values) != self._n:
                raise _Reject(
                    RejectReason.SCHEMA_MISMATCH,
                    f"{_at(i)}'values' list has {len(values)} entries, expected {self._n} "
                    "(manifest feature order)",
                )
            if not _NUMBER_TYPES.issuperset(map(type, values)):
                for name, v in zip(self._features, values, strict=True):
                    if type(v) is not int and type(v) is not float:
                        raise _Reject(
                            RejectReason.WRONG_TYPE,
                            f"{_at(i)}sensor {_show(name)} is {_json_type(v)}, not a number",
                        )
            return asset, ts, values
        what = "missing" if values is None else f"{_json_type(values)}, not an object or list"
        raise _Reject(RejectReason.WRONG_TYPE, f"{_at(i)}'values' is {what}")

    def _row_from_object(self, values: dict[str, Any], i: int) -> list[float]:
        """The slow path of :meth:`_parse_reading`: find the first problem, or drop extras."""
        row: list[float | None] = [None] * self._n
        for name, v in values.items():
            j = self._index.get(name)
            if j is None:
                if self._allow_extra:
                    continue
                raise _Reject(RejectReason.UNKNOWN_SENSOR, f"{_at(i)}unknown sensor {_show(name)}")
            if type(v) is not int and type(v) is not float:
                raise _Reject(
                    RejectReason.WRONG_TYPE,
                    f"{_at(i)}sensor {_show(name)} is {_json_type(v)}, not a number",
                )
            row[j] = v
        for j, v in enumerate(row):
            if v is None:
                raise _Reject(
                    RejectReason.MISSING_SENSOR,
                    f"{_at(i)}sensor {_show(self._features[j])} is missing "
                    f"({row.count(None)} of {self._n} missing)",
                )
        return row  # type: ignore[return-value]  # no None left

    def _to_float32(self, rows: Sequence[Sequence[float]]) -> npt.NDArray[np.float32]:
        """Rows of a batch as float32 [n, n_features]; vectorised :meth:`_check_values`."""
        try:
            wide = np.array(rows, dtype=np.float64)
        except OverflowError:  # an integer beyond float64: let the exact check name it
            self._check_values(rows, indexed=True)
            raise  # pragma: no cover - _check_values raised already
        ok = np.abs(wide) <= _F32_MAX  # NaN compares False
        if not ok.all():
            first = int(np.argmin(ok.all(axis=1)))
            self._check_values(rows[first : first + 1], indexed=True, offset=first)
        return wide.astype(np.float32)

    def _check_values(
        self, rows: Sequence[Sequence[float]], *, indexed: bool, offset: int = 0
    ) -> None:
        """Reject NaN, ±inf and values outside float32's range (they would become inf)."""
        for i, row in enumerate(rows, offset):
            try:
                # One C-level pass; NaN/inf propagate and fail the comparison.
                total = sum(map(abs, row))
            except OverflowError:  # an integer beyond float64
                total = math.inf
            if total <= _F32_MAX:
                continue
            for name, v in zip(self._features, row, strict=True):
                try:
                    fine = math.isfinite(v) and abs(v) <= _F32_MAX
                except OverflowError:
                    fine = False
                if not fine:
                    shown = repr(v) if isinstance(v, float) else f"a {v.bit_length()}-bit integer"
                    where = _at(i) if indexed else ""
                    raise _Reject(
                        RejectReason.NON_FINITE,
                        f"{where}sensor {_show(name)} is {shown}, not a finite float32",
                    )

    # -- binary -------------------------------------------------------------------------------

    def _decode_binary(self, key: str | None, value: bytes) -> list[ReadingBlock]:
        size = len(value)
        if size < _HEADER.size:
            raise _Reject(
                RejectReason.UNDECODABLE,
                f"binary message of {size} bytes is shorter than the {_HEADER.size}-byte header",
            )
        magic, version, fingerprint, n, f, asset_len = _HEADER.unpack_from(value)
        if magic != BINARY_MAGIC:
            raise _Reject(RejectReason.UNDECODABLE, "binary message without magic b'PWR'")
        if version != BINARY_VERSION:
            raise _Reject(
                RejectReason.UNDECODABLE,
                f"binary format version {version} is not supported (this plantwatch reads "
                f"{BINARY_VERSION})",
            )
        if f != self._n or fingerprint != self._fingerprint:
            raise _Reject(
                RejectReason.SCHEMA_MISMATCH,
                f"binary message has {f} features with fingerprint {fingerprint:#010x}; the "
                f"model expects {self._n} with {self._fingerprint:#010x}",
            )
        # Limits and the exact size are checked before anything is allocated from n.
        if n > self._max_batch:
            raise _Reject(
                RejectReason.OVERSIZED,
                f"binary message declares {n} readings, limit {self._max_batch}",
            )
        if asset_len > self._max_asset:
            raise _Reject(
                RejectReason.OVERSIZED,
                f"asset id is {asset_len} bytes, limit {self._max_asset}",
            )
        data_at = _HEADER.size + asset_len
        data_at += -data_at % 8
        expected = data_at + n * (8 + 4 * f)
        if size != expected:
            problem = "truncated" if size < expected else "has trailing bytes"
            raise _Reject(
                RejectReason.UNDECODABLE,
                f"binary message {problem}: {size} bytes, its header implies {expected}",
            )
        try:
            asset = value[_HEADER.size : _HEADER.size + asset_len].decode("utf-8")
        except UnicodeDecodeError:
            raise _Reject(RejectReason.UNDECODABLE, "binary asset id is not valid UTF-8") from None
        if value[_HEADER.size + asset_len : data_at].strip(b"\0"):
            raise _Reject(RejectReason.UNDECODABLE, "binary header padding is not zero")
        self._check_asset(asset, key, -1)
        if n == 0:
            return []
        ts = np.frombuffer(value, dtype=_TS_DTYPE, count=n, offset=data_at)
        values = np.frombuffer(value, dtype=_VALUE_DTYPE, count=n * f, offset=data_at + 8 * n)
        values = values.reshape(n, f)
        ts_ok = ts[0] >= TS_MIN_MS and ts[-1] <= TS_MAX_MS and (n == 1 or (ts[1:] > ts[:-1]).all())
        if not (ts_ok and np.isfinite(values).all()):
            self._explain_binary(ts, values)
        return [ReadingBlock(asset, ts, values)]  # frombuffer over bytes: already read-only

    def _explain_binary(self, ts: npt.NDArray[np.int64], values: npt.NDArray[np.float32]) -> None:
        """Raise for the first bad reading of a binary message (its timestamp checked first)."""
        finite = np.isfinite(values)
        first_bad_row = int(np.argmin(finite.all(axis=1))) if not finite.all() else len(ts)
        for i in range(min(first_bad_row + 1, len(ts))):
            t = int(ts[i])
            if i and t <= ts[i - 1]:
                relation = "equals" if t == ts[i - 1] else "is before"
                raise _Reject(
                    RejectReason.OUT_OF_ORDER,
                    f"reading {i}: ts {t} {relation} the previous reading's ({int(ts[i - 1])})",
                )
            if not TS_MIN_MS <= t <= TS_MAX_MS:
                raise _Reject(
                    RejectReason.BAD_TIMESTAMP,
                    f"reading {i}: ts {t} is not epoch milliseconds in [{TS_MIN_MS}, {TS_MAX_MS}]",
                )
        j = int(np.argmin(finite[first_bad_row]))
        raise _Reject(
            RejectReason.NON_FINITE,
            f"reading {first_bad_row}: sensor {_show(self._features[j])} is "
            f"{float(values[first_bad_row, j])!r}, not a finite float32",
        )


#: Detail of the rejection returned if the decoder itself fails (a bug; logged with traceback).
INTERNAL_ERROR_DETAIL: Final = "internal decoder error (logged); message kept for inspection"


def _remember(known: set[Any], fresh: set[Any]) -> None:
    """Add ``fresh`` to a cache of things that passed, emptied once it outgrows its bound."""
    if len(known) + len(fresh) > _PASSED_CACHE_SIZE:
        known.clear()
    known |= fresh


def _block(asset: str, ts: npt.NDArray[np.int64], values: npt.NDArray[np.float32]) -> ReadingBlock:
    # Read-only like binary blocks, so no consumer can rely on mutating them.
    ts.setflags(write=False)
    values.setflags(write=False)
    return ReadingBlock(asset, ts, values)


#: A run of decoded readings: assets, ts, values, message index per reading.
_Part = tuple[list[str], npt.NDArray[np.int64], npt.NDArray[np.float32], npt.NDArray[np.intp]]
#: A run's fast path: (keys, values, index of the first message) -> its readings, or None.
_FastPath = Callable[[Sequence[bytes | None], Sequence[bytes | None], int], _Part | None]


def _empty_part(n_features: int) -> _Part:
    return (
        [],
        np.empty(0, dtype=np.int64),
        np.empty((0, n_features), dtype=np.float32),
        np.empty(0, dtype=np.intp),
    )


def _join(
    parts: list[_Part], rejections: list[tuple[int, Rejection]], n_features: int
) -> DecodedBatch:
    if not parts:
        parts = [_empty_part(n_features)]
    if len(parts) == 1:
        assets, ts, values, messages = parts[0]
    else:
        assets = list(chain.from_iterable(p[0] for p in parts))
        ts = np.concatenate([p[1] for p in parts])
        values = np.concatenate([p[2] for p in parts])
        messages = np.concatenate([p[3] for p in parts])
    return DecodedBatch(assets, ts, values, messages, rejections)


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off while a run of JSON messages is parsed.

    The parse makes a container per message and reading (dicts, lists) that all live until the
    run is turned into arrays, and every collection meanwhile traverses them again: decoding
    batch messages (100 readings each) took 1.8x as long with it on (bench/results/
    performance.md). Parsed JSON holds no reference cycles, so reference counting frees it
    all as soon as the run is done.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _batch_order(
    assets: list[str], ts: npt.NDArray[np.int64], messages: npt.NDArray[np.intp]
) -> npt.NDArray[np.intp] | None:
    """For readings of batch messages: None if an asset's timestamps do not strictly increase
    within a message, else the order that groups each message's readings per asset in order of
    first appearance, as :meth:`Decoder.decode` returns its blocks."""
    index: dict[str, int] = {}
    codes = np.array([index.setdefault(a, len(index)) for a in assets], dtype=np.intp)
    group = messages * len(index) + codes
    _, first, inverse = np.unique(group, return_index=True, return_inverse=True)
    rank = np.argsort(np.argsort(first, kind="stable"), kind="stable")[inverse]
    order = np.argsort(rank, kind="stable")
    same = rank[order][1:] == rank[order][:-1]
    if not bool((np.diff(ts[order])[same] > 0).all()):
        return None
    return order


def _iso_to_ms(text: str, i: int) -> int:
    if len(text) > _MAX_ISO_LENGTH:
        raise _Reject(RejectReason.BAD_TIMESTAMP, f"{_at(i)}ts string is too long for ISO-8601")
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise _Reject(
            RejectReason.BAD_TIMESTAMP, f"{_at(i)}ts {_show(text)} is not an ISO-8601 timestamp"
        ) from None
    if moment.tzinfo is None:
        # Naive plant-local times silently shift data by hours; make the producer say.
        raise _Reject(
            RejectReason.BAD_TIMESTAMP,
            f"{_at(i)}ts {_show(text)} has no UTC offset (append 'Z' or '+hh:mm')",
        )
    delta = moment - _EPOCH
    ms = (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000
    if not TS_MIN_MS <= ms <= TS_MAX_MS:
        raise _Reject(RejectReason.BAD_TIMESTAMP, f"{_at(i)}ts {_show(text)} is outside 1973..2286")
    return ms


# -- encoders ---------------------------------------------------------------------------------


def _payload(asset: str, ts_ms: int, values: Mapping[str, float]) -> dict[str, object]:
    for name, value in values.items():
        if not math.isfinite(value):
            # JSON has no NaN/inf; a consumer could not parse the message.
            raise DataError(f"reading of {asset} at ts={ts_ms}: {name} is {value}, not finite")
    return {"asset": asset, "ts": ts_ms, "values": dict(values)}


def encode_json_reading(asset: str, ts_ms: int, values: Mapping[str, float]) -> bytes:
    """Encode one reading as compact UTF-8 JSON."""
    return json.dumps(_payload(asset, ts_ms, values), separators=(",", ":")).encode()


def encode_json_batch(readings: Iterable[Reading]) -> bytes:
    """Encode readings as one compact JSON list (one message)."""
    return json.dumps(
        [_payload(r.asset, r.ts_ms, r.values) for r in readings], separators=(",", ":")
    ).encode()


def encode_binary(
    asset: str,
    features: Sequence[str],
    ts_ms: npt.NDArray[np.int64],
    values: npt.NDArray[np.float32],
) -> bytes:
    """Encode one asset's readings in the binary format (see the module docstring).

    Raises :class:`DataError` for what the format cannot carry (shapes, sizes, an asset id that
    is empty or not encodable). Values and timestamps are *not* judged here: NaN or unordered
    timestamps encode fine and are rejected by the decoder.
    """
    ts = np.ascontiguousarray(ts_ms, dtype=_TS_DTYPE)
    vals = np.ascontiguousarray(values, dtype=_VALUE_DTYPE)
    n, f = len(ts), len(features)
    if ts.ndim != 1 or vals.shape != (n, f):
        raise DataError(
            f"binary reading block of {asset!r}: ts shape {ts.shape} and values shape "
            f"{vals.shape} do not fit {f} features"
        )
    try:
        asset_bytes = asset.encode("utf-8")
    except UnicodeEncodeError:
        raise DataError(f"asset id {asset!r} cannot be encoded as UTF-8") from None
    if not 1 <= len(asset_bytes) <= 0xFFFF or not 1 <= f <= 0xFFFF or n > 0xFFFF_FFFF:
        raise DataError(
            f"binary reading block of {asset!r}: asset id of {len(asset_bytes)} bytes, "
            f"{f} features, {n} readings exceed the format's limits"
        )
    head = (
        _HEADER.pack(
            BINARY_MAGIC, BINARY_VERSION, schema_fingerprint(features), n, f, len(asset_bytes)
        )
        + asset_bytes
    )
    return b"".join((head, bytes(-len(head) % 8), ts.tobytes(), vals.tobytes()))
