"""What a commit carries besides the offset: how far a partition was scored, and the detector.

The service commits, per partition, the *oldest offset still needed to rebuild the windows*, so
a restarted consumer re-reads a few windows' worth of readings. The commit metadata says which
of those were already scored (``scored_through``) and holds the detector state of the
partition's assets at that point, so after a restart, rebalance or crash the service rebuilds
the windows without scoring them again and continues the alert state machines exactly where the
commit left them: no reading after the first full window goes unscored, and no alert event is
produced twice.

Kafka limits commit metadata (``offset.metadata.max.bytes``, 4096 by default). The state is
compressed; if it is still too large the service leaves out the partial k-of-n histories, then
the detector state altogether (logged): the windows are still rebuilt exactly, but alerts open at
that moment would start over as new alerts after a restart.
"""

from __future__ import annotations

import base64
import json
import logging
import zlib
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

FORMAT = "pw1:"


@dataclass(frozen=True)
class CommitState:
    scored_through: int
    #: The detector state of ``model.path``'s route, and of further routes by name.
    detector: dict[str, Any] | None = None
    routes: dict[str, dict[str, Any]] | None = None


def encode(state: CommitState, *, limit: int = 4096) -> str | None:
    """Metadata for one partition's commit; ``None`` if it would exceed ``limit`` bytes."""
    doc: dict[str, Any] = {"t": state.scored_through}
    if state.detector:
        doc["d"] = state.detector
    if state.routes:
        doc["r"] = state.routes
    text = _pack(doc)
    return text if len(text) <= limit else None


def decode(text: str | None) -> CommitState | None:
    """Parse metadata written by :func:`encode`; ``None`` for anything else (a foreign commit)."""
    if not text or not text.startswith(FORMAT):
        return None
    try:
        doc = json.loads(zlib.decompress(base64.b64decode(text[len(FORMAT) :])))
        return CommitState(int(doc["t"]), detector=doc.get("d"), routes=doc.get("r"))
    except (ValueError, KeyError, TypeError, zlib.error):
        logger.warning("ignoring unreadable commit metadata")
        return None


def _pack(doc: dict[str, Any]) -> str:
    raw = json.dumps(doc, separators=(",", ":")).encode()
    return FORMAT + base64.b64encode(zlib.compress(raw, 6)).decode("ascii")
