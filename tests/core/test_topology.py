"""Topology naming: the default band keeps the lane's original queue and key; other bands never collide with lanes."""

from __future__ import annotations

import pytest
from pamqp import constants

from devart.core.contracts import check_capabilities
from devart.core.messaging.topology import (
    DEFAULT_PRIORITY,
    PRIORITIES,
    Topology,
    band_key,
    can_serve,
    lane_name,
    parse_band_key,
)

TOPOLOGY = Topology(prefix="devart", delivery_limit=5)


def test_default_band_is_the_original_queue_and_routing_key() -> None:
    lane = lane_name(["test", "python"])
    assert DEFAULT_PRIORITY == 3
    assert band_key(lane) == band_key(lane, 3) == "python+test"
    assert TOPOLOGY.lane_queue(lane) == TOPOLOGY.lane_queue(lane, 3) == "devart.lane.python+test"


def test_other_bands_have_their_own_queue_and_key() -> None:
    assert band_key("python+test", 5) == "python+test,p5"
    assert TOPOLOGY.lane_queue("python+test", 1) == "devart.lane.python+test,p1"
    assert TOPOLOGY.lane_queue("any", 5) == "devart.lane.any,p5"
    queues = {TOPOLOGY.lane_queue("python+test", p) for p in PRIORITIES}
    assert len(queues) == len(PRIORITIES)
    # The AMQP client refuses queue names with characters outside a small set before they reach the broker.
    assert all(constants.DOMAIN_REGEX["queue-name"].fullmatch(q) for q in queues)


@pytest.mark.parametrize("lane", ["any", "python", "python+test", "build+python+test"])
def test_band_keys_round_trip(lane: str) -> None:
    for priority in PRIORITIES:
        assert parse_band_key(band_key(lane, priority)) == (lane, priority)


def test_no_valid_capability_can_make_a_lane_that_reads_as_a_band() -> None:
    # The band mark's comma is refused in capabilities, so a band key never names a real lane.
    with pytest.raises(ValueError, match="invalid capability"):
        check_capabilities(["python", "test,p5"])


def test_an_older_agent_never_serves_another_band() -> None:
    # An agent from before priorities reads each listed key as a lane and checks it against its capabilities.
    capabilities = {"python", "test"}
    assert can_serve(capabilities, band_key("python+test"))
    assert not any(can_serve(capabilities, band_key("python+test", p)) for p in PRIORITIES if p != DEFAULT_PRIORITY)
    assert not can_serve(capabilities, band_key("any", 5))


def test_out_of_range_priority_is_refused() -> None:
    for bad in (0, 6):
        with pytest.raises(ValueError, match="priority"):
            band_key("python", bad)
