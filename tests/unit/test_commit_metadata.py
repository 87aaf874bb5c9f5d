"""What a partition's commit carries when its alert state does not fit (no Kafka needed)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from aiokafka import TopicPartition
from aiokafka.structs import OffsetAndMetadata

from monitor import offsets
from monitor.config import DEFAULT_ROUTE, Settings
from monitor.service import Service
from tests.stand_ins import route

FEATURES = ("a", "b")
TP = TopicPartition("readings", 0)


def _service(tmp_path: Path, limit: int, routes: tuple[str, ...] = ()) -> Service:
    """A service whose routes (``routes``, then the default) are built by hand (no bundle)."""
    settings = Settings.model_validate(
        {
            "model": {"path": str(tmp_path)},
            "kafka": {"offset_metadata_max_bytes": limit},
            "routes": [{"name": r, "asset_patterns": [f"{r}-*"], "model": "/r"} for r in routes],
        }
    )
    service = Service(settings)
    # Routes may differ in their rule: the other routes' n is 3 here.
    service._routes = [
        route(service.models, name, n=1 if name == DEFAULT_ROUTE else 3)
        for name in (*routes, DEFAULT_ROUTE)
    ]
    return service


def _open_alerts(service: Service, n_assets: int, route: int = -1, prefix: str = "pump") -> None:
    assets = [f"{prefix}-{i:05d}" for i in range(n_assets)]
    rng = np.random.default_rng(0)
    service.routes[route].detector.observe(
        assets,
        np.full(n_assets, 1_767_225_600_000, dtype=np.int64),
        (2.0 + rng.random(n_assets)).astype(np.float32),  # above the threshold: alerts open
        rng.random((n_assets, 2)).astype(np.float32),
    )
    service._partition_assets[TP].update(assets)


def test_small_state_is_committed(tmp_path: Path) -> None:
    service = _service(tmp_path, limit=4096)
    _open_alerts(service, 3)
    state = offsets.decode(service._commit_metadata(TP, 41))
    assert state is not None
    assert state.scored_through == 41
    assert state.detector  # the open alerts travel with the commit


def test_oversized_state_commits_bare_and_warns_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    service = _service(tmp_path, limit=256)
    _open_alerts(service, 2000)
    caplog.set_level(logging.WARNING, logger="monitor.service")
    texts = [service._commit_metadata(TP, through) for through in range(100, 150)]
    for through, text in zip(range(100, 150), texts, strict=True):
        assert len(text) <= 256
        state = offsets.decode(text)
        assert state is not None
        assert state.scored_through == through  # the offset part is never lost
        assert state.detector is None
    warnings = [r for r in caplog.records if "does not fit" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]  # not once per batch
    assert "2000 assets" in warnings[0].getMessage()


class _Offsets:
    """An admin client whose group holds one commit of TP."""

    def __init__(self, offset: int, metadata: str) -> None:
        self.commit = OffsetAndMetadata(offset, metadata)

    async def list_consumer_group_offsets(
        self, group_id: str, partitions: list[TopicPartition]
    ) -> dict[TopicPartition, OffsetAndMetadata]:
        return {TP: self.commit}


async def test_every_routes_alert_state_travels_with_the_commit(tmp_path: Path) -> None:
    """With routes, a partition's commit carries each route's alerts under its name, and a new
    owner restores each into the route of that name (whose detector rule may differ)."""
    service = _service(tmp_path, limit=4096, routes=("comp",))
    _open_alerts(service, 2, route=0, prefix="comp")
    _open_alerts(service, 3)
    text = service._commit_metadata(TP, 41)
    state = offsets.decode(text)
    assert state is not None
    assert state.detector is not None
    assert state.routes is not None
    assert sorted(state.detector["assets"]) == [f"pump-{i:05d}" for i in range(3)]
    assert sorted(state.routes["comp"]["assets"]) == ["comp-00000", "comp-00001"]

    after = _service(tmp_path, limit=4096, routes=("comp",))
    after._admin = _Offsets(30, text)  # type: ignore[assignment]
    assert await after._assign([TP]) == set()  # no consumer to seek here
    assert [route.detector.open_alerts() for route in after.routes] == [2, 3]
    assert after._replay_through == {TP: 41}
