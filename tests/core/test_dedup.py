"""Duplicate detection by ``event_id`` (``scoring.fold._prune_seen``): how long an id
is remembered, and that the memory stays bounded."""

from __future__ import annotations

import pytest

from schemas.policy import PolicyBook
from scoring.fold import DEDUP_RECENT_IDS
from tests.core.conftest import Customer
from tests.core.factory import at, purchase, visit


@pytest.mark.parametrize("keep_objects", [False, True])
def test_a_redelivery_of_a_recent_event_is_a_duplicate_however_old_in_event_time(
        keep_objects: bool) -> None:
    # A crash during a backlog: the first event was applied, its offset not
    # committed, and the worker went on a year in event time before dying.
    first = purchase(at(0), 100, event_id="first")
    c = Customer(keep_objects=keep_objects).send(first)
    for month in range(1, 13):
        c.send(visit(at(30 * month)))
    c.send(first)  # redelivered: 360 days behind, far past the 90 days of retention
    assert c.outcomes[-1].status == "duplicate"
    c.send(purchase(at(0), 999, event_id="first"))  # the same id with other content
    assert c.outcomes[-1].status == "rejected"
    assert c.outcomes[-1].reason == "conflicting_duplicate"
    assert c.snap()["spend_total"] == 100


def test_an_old_id_beyond_the_recent_ones_and_the_retention_is_forgotten() -> None:
    sent = [visit(at(10 * i), event_id=f"v{i}") for i in range(3 * DEDUP_RECENT_IDS)]
    c = Customer().send(*sent)
    seen = c.state.seen
    # Bounded: the ids within 90 days and at most twice the recent ones.
    assert DEDUP_RECENT_IDS <= len(seen) <= 2 * DEDUP_RECENT_IDS + 10
    c.send(sent[-DEDUP_RECENT_IDS])  # the oldest of the recent ones: remembered
    assert c.outcomes[-1].status == "duplicate"
    c.send(sent[0])  # years behind and long forgotten: too late, changes nothing
    assert c.outcomes[-1].reason == "too_late"
    assert c.snap()["visit_days"] == len(sent)


def test_the_cap_keeps_the_recent_ids_and_the_newest_others() -> None:
    policies = PolicyBook(defaults={"max_seen_ids": 64})
    sent = [visit(at(0, minutes=i), event_id=f"v{i:03d}") for i in range(200)]
    c = Customer(policies).send(*sent)
    assert len(c.state.seen) <= 64
    for data in (sent[-1], sent[-DEDUP_RECENT_IDS], sent[-64]):
        c.send(data)
        assert c.outcomes[-1].status == "duplicate"
