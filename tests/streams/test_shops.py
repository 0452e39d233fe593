"""The service's shop tallies (streams/shops.py) equal ``loyalty replay``'s figures.

The service keeps one tally row per shop and partition, moved by a delta per
state change (events and time sweeps), and merges the rows of every partition
for ``GET /shops/{shop}``. Here the same records go through both paths, the
service's with states and tally rows round-tripped through their encodings
as its tables hold them, and the figures are compared at one instant: the
last sweep's.
"""

from __future__ import annotations

import random
import zlib
from datetime import UTC, datetime, timedelta

import pytest

from schemas import codec
from schemas.events import InvalidEvent, parse_event
from schemas.policy import PolicyBook
from scoring.clock import day_of, to_us
from scoring.engine import PYTHON
from scoring.replay import fold_lines, snapshots
from scoring.shop import ShopTally
from streams import synthetic
from streams.shops import (
    DecodedTallies,
    PendingTallies,
    TallyDelta,
    delta_for_advance,
    delta_for_event,
)
from streams.topics import shop_of, tally_key

PARTITIONS = 4
END = datetime(2026, 1, 1, tzinfo=UTC)


def update_row(raw: bytes | None, delta: TallyDelta) -> bytes:
    """``delta`` applied to an encoded tally row (``None``: empty), encoded: what the
    committer does to a row (streams/commit.py), one delta at a time."""
    return bytes(delta.apply(ShopTally.decode(raw)).encode())


def population(seed: int) -> list[bytes]:
    """Synthetic shops (every fault kind) over 400 days, plus answers at touchpoints."""
    records = synthetic.generate(seed=seed, shops=2, customers_per_shop=40, end=END, span_days=400)
    lines = synthetic.lines(records)
    rnd = random.Random(seed)
    for i in range(120):
        shop = rnd.choice(synthetic.SHOP_NAMES[:2])
        when = END - timedelta(days=rnd.uniform(0, 400))
        body = {"type": "feedback", "event_id": f"tp{i}", "shop_id": shop,
                "customer_id": f"c{rnd.randrange(40):05d}", "nps": rnd.randrange(11),
                "occurred_at": when.isoformat(), "comment": "note"}
        if rnd.random() < 0.8:
            body["touchpoint"] = rnd.choice(["store", "web", "app", "null"])
        if rnd.random() < 0.5:
            body["share_of_wallet"] = rnd.randrange(101)
        lines.insert(rnd.randrange(len(lines) + 1), codec.dumps(body))
    return lines


class Service:
    """The agent's and the sweep's tally bookkeeping, without Kafka."""

    def __init__(self, policies: PolicyBook) -> None:
        self.policies = policies
        self.customers: dict[bytes, bytes] = {}
        self.tallies: dict[bytes, bytes] = {}

    def partition(self, key: bytes) -> int:
        return zlib.crc32(key) % PARTITIONS

    def consume(self, line: bytes) -> int | None:
        """Process one record like the agent; returns its event time (None: invalid)."""
        try:
            event = parse_event(line, now=END, policies=self.policies)
        except InvalidEvent:
            return None
        key = f"{event.shop_id}|{event.customer_id}".encode()
        policy = self.policies.for_shop(event.shop_id)
        raw = self.customers.get(key)
        old = PYTHON.decode(raw) if raw is not None else None
        outcome = PYTHON.apply(old, event, policy)
        if outcome.changed:
            self.customers[key] = PYTHON.encode(outcome.state)
            self._move(key, delta_for_event(outcome, event, policy, old is None))
        return to_us(event.occurred_at)

    def sweep(self, now_us: int) -> None:
        for key, raw in list(self.customers.items()):
            outcome = PYTHON.advance(PYTHON.decode(raw), now_us, self.policies.for_shop(shop_of(key)))
            if outcome.changed:
                self.customers[key] = PYTHON.encode(outcome.state)
                self._move(key, delta_for_advance(outcome))

    def _move(self, key: bytes, delta) -> None:  # noqa: ANN001 - a TallyDelta
        tkey = tally_key(shop_of(key), self.partition(key))
        self.tallies[tkey] = update_row(self.tallies.get(tkey), delta)

    def merged(self, shop: str) -> ShopTally:
        total = ShopTally.empty()
        for p in range(PARTITIONS):
            raw = self.tallies.get(tally_key(shop, p))
            if raw:
                total = total.merge(ShopTally.decode(raw))
        return total

    def recount(self, shop: str) -> ShopTally:
        tally = ShopTally.empty()
        for key, raw in self.customers.items():
            if shop_of(key) == shop:
                PYTHON.count_customer(tally, PYTHON.decode(raw), self.policies.for_shop(shop))
        return tally


@pytest.mark.parametrize("seed", [3, 11])
def test_merged_partition_tallies_equal_the_replay_figures(seed: int) -> None:
    policies = PolicyBook(shops={"books-north": {"nps_band_leader_min": 55, "wallet_committed_min_pct": 60}})
    lines = population(seed)
    service = Service(policies)
    newest = 0
    for i, line in enumerate(lines):
        newest = max(newest, service.consume(line) or 0)
        if i % 150 == 149:  # sweeps in between, at the newest event time seen so far
            service.sweep(newest)
    as_of = END + timedelta(days=2, hours=3)
    service.sweep(to_us(as_of))

    res = fold_lines(lines, policies=policies, as_of=as_of, now=END)
    _, _, tallies = snapshots(res, policies, as_of, with_clv=False)
    assert set(tallies) == {"cafe-aurora", "books-north"}
    for shop, tally in tallies.items():
        policy = policies.for_shop(shop)
        want = tally.figures(shop, day_of(to_us(as_of)), policy)
        got = service.merged(shop).figures(shop, day_of(to_us(as_of)), policy)
        assert got == want
        # Every new figure is exercised, not vacuously equal.
        assert want["buyers"] > 0 and want["repeat_rate"] is not None
        assert want["attached_spend_uplift"] is not None and want["average_check"] > 0
        assert want["detractor_statuses"]["detractor"] > 0 and want["detractor_statuses"]["recovered"] > 0
        assert {t["touchpoint"] for t in want["nps_by_touchpoint"]} >= {None, "store", "null"}
        # The sweep's full recount gives the same figures as the deltas, also
        # with the windows placed later (no event or sweep in between).
        for day in (day_of(to_us(as_of)), day_of(to_us(as_of)) + 200):
            assert (service.recount(shop).figures(shop, day, policy)
                    == service.merged(shop).figures(shop, day, policy))


def test_a_tally_row_written_before_rule_v2_still_decodes() -> None:
    old_row = b'[{"repeat":2,"first_visit":1},[1,0,1],[[20000,1,0,1]]]'
    tally = ShopTally.decode(old_row)
    figures = tally.figures("s", 20010, PolicyBook().default)
    assert figures["customers"] == 3 and figures["nps"]["responses"] == 2
    assert figures["buyers"] == 0 and figures["repeat_rate"] is None
    again = ShopTally.decode(tally.encode())
    assert again.figures("s", 20010, PolicyBook().default) == figures


def test_money_sums_beyond_64_bits_encode() -> None:
    tally = ShopTally.empty()
    tally.spend_sum = 2**70
    tally.spend_days[5] = [5, 2**66, 2**65]
    again = ShopTally.decode(tally.encode())
    assert (again.spend_sum, again.spend_days) == (2**70, {5: [5, 2**66, 2**65]})


def test_a_kept_tally_is_served_once_and_only_for_its_own_bytes() -> None:
    kept = DecodedTallies(capacity=2)
    tally = ShopTally.empty()
    tally.move(None, "new")
    raw = tally.encode()
    kept.keep("a", raw, tally)
    assert kept.take("a", raw) is tally  # handed over ...
    again = kept.take("a", raw)  # ... so a second taker decodes its own copy
    assert again is not tally and again.funnel == {"new": 1}
    kept.keep("a", raw, tally)
    other = ShopTally.empty()
    other.move(None, "loyal")
    assert kept.take("a", other.encode()).funnel == {"loyal": 1}  # another writer's row
    assert kept.take("a", None).funnel == {}  # no row: an empty tally
    for slot in "abc":
        kept.keep(slot, raw, ShopTally.decode(raw))
    assert kept.take("a", raw) is not None and (kept.hits, kept.misses) == (1, 4)
    assert len(kept) == 2  # "a", kept first, left first


def test_numeric_kpis_become_prometheus_gauges() -> None:
    from streams.metrics import Metrics

    policies = PolicyBook()
    res = fold_lines(population(5), policies=policies, now=END)
    as_of_us, _, tallies = snapshots(res, policies, None, with_clv=False)
    figures = tallies["cafe-aurora"].figures("cafe-aurora", day_of(as_of_us), policies.default)
    metrics = Metrics()
    metrics.set_shop_figures("cafe-aurora", figures)
    text = metrics.render().decode()
    assert f'loyalty_shop_kpi{{kpi="buyers",shop="cafe-aurora"}} {float(figures["buyers"])}' in text
    assert f'loyalty_shop_kpi{{kpi="repeat_rate",shop="cafe-aurora"}} {figures["repeat_rate"]}' in text
    detractors = figures["detractor_statuses"]["detractor"]
    assert (f'loyalty_shop_customers_by{{dimension="detractor_statuses",shop="cafe-aurora",value="detractor"}} '
            f'{float(detractors)}') in text
    assert 'loyalty_customers{shop="cafe-aurora",stage="repeat"}' in text  # the funnel still published


@pytest.mark.parametrize("seed", range(5))
def test_held_tallies_written_in_any_grouping_give_the_rows_of_writing_each_delta_at_once(
        seed: int) -> None:
    # The commit applies each delta to the row's held tally and writes the row once
    # per interval (streams.commit, step 5), while another writer (a sweep's
    # recount) may change the row in between: the held deltas are then applied to
    # what the row holds (ServiceContext.flush_tallies). Deltas commute, so the rows
    # are those of writing each delta at once.
    rng = random.Random(seed)
    stages = [None, "new", "loyal", "at_risk", "lapsed"]
    slots = [(0, tally_key("s1", 0)), (1, tally_key("s1", 1))]
    at_once: dict[tuple[int, bytes], bytes | None] = dict.fromkeys(slots)
    later: dict[tuple[int, bytes], bytes | None] = dict.fromkeys(slots)
    held = PendingTallies()

    def flush(partitions: list[int] | None = None) -> None:
        for slot, entry in held.take(partitions).items():
            if later[slot] == entry.base:
                later[slot] = bytes(entry.tally.encode())
            else:  # changed meanwhile: the deltas on top of what it holds
                for d in entry.deltas:
                    later[slot] = update_row(later[slot], d)

    for step in range(200):
        slot = rng.choice(slots)
        delta = TallyDelta(rng.choice(stages), rng.choice(stages[1:]),
                           ((rng.randrange(20_000, 20_030), rng.randrange(3), None),)
                           if rng.random() < 0.3 else ())
        at_once[slot] = update_row(at_once[slot], delta)
        if rng.random() < 0.3:
            later[slot] = update_row(later[slot], delta)  # another writer, at once
        else:
            held.check_generation(1)
            if not held.add(slot, delta):
                held.hold(slot, later[slot], ShopTally.decode(later[slot]), float(step))
                assert held.add(slot, delta)
        if rng.random() < 0.1:
            flush([rng.randrange(2)])
    flush()
    assert len(held) == 0 and held.since is None

    def fields(raw: bytes | None) -> dict[str, object]:
        tally = ShopTally.decode(raw)
        return {name: getattr(tally, name) for name in ShopTally.__slots__}

    assert {s: fields(r) for s, r in later.items()} == {s: fields(r) for s, r in at_once.items()}
    assert ShopTally.decode(later[slots[0]]).funnel  # something was counted


def test_held_deltas_are_due_after_the_interval_and_dropped_with_their_generation() -> None:
    held = PendingTallies()
    slot = (2, tally_key("s1", 2))

    def add(at: tuple[int, bytes], generation: int, now: float) -> None:
        # as ServiceContext.hold_tally_deltas does it
        held.check_generation(generation)
        if not held.add(at, TallyDelta(None, "new")):
            held.hold(at, None, ShopTally.empty(), now)
            assert held.add(at, TallyDelta(None, "new"))

    assert not held.due(100.0, 0)  # nothing held: never due
    assert not held.add(slot, TallyDelta(None, "new"))  # none held: nothing applied
    add(slot, 7, 10.0)
    add(slot, 7, 10.5)
    assert not held.due(10.9, 1.0) and held.due(11.0, 1.0)  # from the oldest
    assert len(held) == 2
    held.check_generation(7)
    assert len(held) == 2 and not held.dropped
    other = (3, tally_key("s1", 3))
    add(other, 8, 12.0)
    assert len(held) == 1 and held.dropped == {2}  # generation 7's deltas dropped
    assert held.due(13.0, 1.0) and not held.due(12.5, 1.0)  # since the new oldest
    assert held.recounted(2) and not held.recounted(2) and not held.recounted(3)
    later = (4, tally_key("s1", 4))
    add(later, 8, 14.0)
    assert set(held.take([3])) == {other}
    # what is left sets the next flush: the row held at 14.0, not the one taken
    assert not held.due(14.5, 1.0) and held.due(15.0, 1.0)
    [entry] = held.take().values()
    assert entry.tally.funnel == {"new": 1} and entry.base is None and len(entry.deltas) == 1
    assert held.since is None
