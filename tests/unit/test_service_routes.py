"""How one service's routes share out the messages of a batch (no Kafka needed)."""

from __future__ import annotations

from pathlib import Path

from monitor.config import DEFAULT_ROUTE, Settings
from monitor.records import Decoder, DecoderConfig, Reading, encode_json_batch, encode_json_reading
from monitor.service import Service
from tests.stand_ins import FEATURES, route

T0 = 1_767_225_600_000
OK = {"a": 1.0, "b": 2.0}


def _service(tmp_path: Path) -> Service:
    """Pumps on model.path, compressors on a route, decoders as Service.start configures them."""
    settings = Settings.model_validate(
        {
            "model": {"path": str(tmp_path)},
            "input": {"asset_patterns": ["pump-*"]},
            "routes": [{"name": "comp", "asset_patterns": ["compressor-*"], "model": "/c"}],
        }
    )
    service = Service(settings)
    comp, default = route(service.models, "comp"), route(service.models)
    comp.decoder = Decoder(
        DecoderConfig(FEATURES, asset_patterns=("compressor-*",), other_asset_patterns=("pump-*",))
    )
    default.decoder = Decoder(
        DecoderConfig(FEATURES, asset_patterns=("pump-*",), claimed_patterns=("compressor-*",))
    )
    service._routes = [comp, default]
    return service


def test_a_message_no_route_takes_is_refused_once_with_the_owners_reason(
    tmp_path: Path,
) -> None:
    service = _service(tmp_path)
    bad_value = {"a": 1.0, "b": 1e39}  # beyond float32
    messages = [
        (b"pump-1", encode_json_reading("pump-1", T0, OK)),
        (None, encode_json_reading("compressor-1", T0, OK)),  # unkeyed: every route sees it
        # Unkeyed batch of compressor readings, one bad: the pump route calls it another's, the
        # compressor route names the bad value; the latter is the reason given.
        (
            None,
            encode_json_batch(
                [Reading("compressor-2", T0, OK), Reading("compressor-2", T0 + 1000, bad_value)]
            ),
        ),
        (b"compressor-3", b"\x00not json"),  # keyed: its route alone decodes it
        (None, encode_json_reading("boiler-9", T0, OK)),  # nobody's
        (None, encode_json_batch([Reading("pump-2", T0, OK), Reading("compressor-4", T0, OK)])),
        # The same for pumps, whose route comes last: still the bad value, not "another's".
        (
            None,
            encode_json_batch([Reading("pump-3", T0, OK), Reading("pump-3", T0 + 1000, bad_value)]),
        ),
    ]
    keys = [k for k, _ in messages]
    values = [v for _, v in messages]
    comp, default = service._decode(keys, values)
    assert sorted(set(default.assets)) == ["pump-1"]
    assert sorted(set(comp.assets)) == ["compressor-1"]
    # Every refusal is reported once, in the first route's batch (the routes listed come first).
    assert default.rejections == []
    reasons = {i: (r.reason.value, r.other_asset) for i, r in comp.rejections}
    assert reasons == {
        2: ("non_finite", False),
        3: ("undecodable", False),
        4: ("unknown_asset", False),
        5: ("unknown_asset", False),
        6: ("non_finite", False),
    }
    # Keys are routed once and remembered.
    assert service._key_routes == {b"pump-1": 1, b"compressor-3": 0, None: -1}
    assert service.routes[-1].name == DEFAULT_ROUTE
