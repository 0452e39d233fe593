"""Forgetting a customer in the pure core: ``fold.forget`` leaves no state and
undoes the customer's share of every shop figure."""

from __future__ import annotations

from schemas.policy import PolicyBook
from scoring.clock import day_of, to_us
from scoring.fold import forget
from scoring.replay import fold_lines, snapshots
from scoring.shop import ShopTally
from scoring.snapshot import head_as_of
from tests.core.conftest import Customer
from tests.core.factory import at, feedback, purchase, refund, visit


def shop_lines() -> list[bytes]:
    lines = []
    for n, cust in enumerate(("ann", "bob", "cy")):
        lines += [visit(at(-3), customer=cust), purchase(at(0), 1_000 * (n + 1), order_id="a", customer=cust),
                  purchase(at(20 + n), 700, order_id="b", customer=cust),
                  feedback(at(21), 3 * n + 2, customer=cust, touchpoint="store", share_of_wallet=40 * n)]
    lines += [refund(at(22), "a", 300, customer="bob"), feedback(at(30), 9, customer="bob"),
              purchase(at(40), 2_000, order_id="c", customer="bob")]
    return lines


def test_forgetting_a_customer_removes_it_from_every_shop_figure() -> None:
    policies = PolicyBook()
    policy = policies.default
    as_of = at(45)
    day = day_of(to_us(as_of))
    everyone = fold_lines(shop_lines(), policies=policies, as_of=as_of)
    _, _, tallies = snapshots(everyone, policies, as_of, with_clv=False)
    bob = everyone.states[("shop-1", "bob")]
    erasure = forget(bob, policy)
    assert (erasure.shop_id, erasure.customer_id, erasure.stage_before) == ("shop-1", "bob", bob.stage)

    without = fold_lines([x for x in shop_lines() if b'"customer_id":"bob"' not in x],
                         policies=policies, as_of=as_of)
    _, _, want = snapshots(without, policies, as_of, with_clv=False)
    got = tallies["shop-1"].merge(erasure.tally).figures("shop-1", day, policy)
    assert got == want["shop-1"].figures("shop-1", day, policy)
    assert got["customers"] == 2 and got["nps"]["responses"] == 2
    # ... and it really was counted before.
    assert tallies["shop-1"].figures("shop-1", day, policy)["customers"] == 3


def test_the_erasure_is_the_exact_inverse_of_the_customers_share_and_changes_nothing_else() -> None:
    policy = PolicyBook().default
    c = Customer().send(purchase(at(0), 5_000, order_id="a"), feedback(at(1), 2, touchpoint="web"),
                        purchase(at(3), 800), feedback(at(9), 8, share_of_wallet=75))
    before = c.state.encode()
    alone = ShopTally()
    alone.add_customer(head_as_of(c.state, c.state.clock, policy), c.state.stage, policy)  # a recount
    erasure = forget(c.state, policy)
    assert c.state.encode() == before  # pure: the caller drops the state itself
    day = day_of(to_us(at(9)))
    assert alone.figures("shop-1", day, policy)["customers"] == 1
    assert alone.merge(erasure.tally).figures("shop-1", day, policy) == ShopTally().figures("shop-1", day, policy)
