"""plantwatch's group protocol: aiokafka's round-robin, plus the members' instance names."""

from __future__ import annotations

from aiokafka.cluster import ClusterMetadata
from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from aiokafka.coordinator.protocol import (
    ConsumerProtocolMemberAssignment,
    ConsumerProtocolMemberMetadata,
)

from monitor.kafka import MembersAssignor, group_assignors


class _Cluster(ClusterMetadata):  # type: ignore[misc]
    def __init__(self, partitions: dict[str, int]) -> None:
        super().__init__()
        self._counts = partitions

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        n = self._counts.get(topic)
        return set(range(n)) if n is not None else None


def _wire(metadata: ConsumerProtocolMemberMetadata) -> ConsumerProtocolMemberMetadata:
    """As the leader receives it: encoded and decoded."""
    decoded: ConsumerProtocolMemberMetadata = ConsumerProtocolMemberMetadata.decode(
        metadata.encode()
    )
    return decoded


def test_members_learn_every_instance_of_the_generation() -> None:
    a, b, c = (group_assignors(name)[0] for name in ("a", "b", "c"))
    assert {a.name, b.name, c.name} == {"plantwatch-roundrobin"}
    members = {
        "m-1": _wire(a.metadata(["readings"])),
        "m-2": _wire(b.metadata(["readings"])),
        "m-3": _wire(c.metadata(["readings"])),
    }
    cluster = _Cluster({"readings": 7})
    assignments = a.assign(cluster, members)  # a is the leader
    plain = RoundRobinPartitionAssignor.assign(cluster, members)
    assert {m: x.partitions() for m, x in assignments.items()} == {
        m: x.partitions() for m, x in plain.items()
    }
    for member, assignor in (("m-1", a), ("m-2", b), ("m-3", c)):
        wire = ConsumerProtocolMemberAssignment.decode(assignments[member].encode())
        assignor.on_assignment(wire)
        assert assignor.members == frozenset({"a", "b", "c"})
    # Each consumer's assignor is its own class: one instance's state is not another's.
    assert group_assignors("d")[0].members is None
    assert MembersAssignor.members is None


def test_membership_is_unknown_without_plantwatch_data() -> None:
    (own, fallback) = group_assignors("a")
    assert fallback is RoundRobinPartitionAssignor
    own.on_assignment(ConsumerProtocolMemberAssignment(0, [("readings", [0])], b""))
    assert own.members is None
    own.on_assignment(ConsumerProtocolMemberAssignment(0, [("readings", [0])], b'{"a": 1}'))
    assert own.members is None
    own.on_assignment(ConsumerProtocolMemberAssignment(0, [("readings", [0])], b'["a", "b"]'))
    assert own.members == frozenset({"a", "b"})


def test_each_join_forgets_the_last_generation() -> None:
    """A join whose generation settles on plain ``roundrobin`` (an older member) never calls
    this assignor's ``on_assignment``: the previous list must not stand for it."""
    own, _ = group_assignors("a")
    own.on_assignment(ConsumerProtocolMemberAssignment(0, [("readings", [0])], b'["a", "b"]'))
    assert own.members == frozenset({"a", "b"})
    own.metadata(["readings"])  # the next join
    assert own.members is None
