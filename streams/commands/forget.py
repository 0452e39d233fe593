"""Forget a customer (right to erasure): send a forget request to the service.

  loyalty forget SHOP CUSTOMER [--delivery-timeout S]

Produces one ``forget`` request, keyed like the customer's events, to the
forget topic (LOYALTY_TOPIC_FORGET) and waits for the broker's
acknowledgement; it then prints the request id. The erasure completes
asynchronously: the worker that owns the customer deletes its state, writes
tombstones on the scores topic and the state changelog and removes it from
the shop figures. Records already on the transitions, rewards and dead-letter
topics expire with those topics' retention. Exit 0 once acknowledged, 1 when
the broker did not acknowledge (nothing was requested), 2 for invalid ids.
"""

from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the forget options."""
    parser.add_argument("shop")
    parser.add_argument("customer")
    parser.add_argument("--delivery-timeout", type=float, default=30.0, metavar="S",
                        help="seconds to wait for the broker's acknowledgement (default %(default)g)")


def run(args: argparse.Namespace) -> int:
    """Produce the request; print its id once the broker acknowledged it."""
    import asyncio

    from schemas import codec
    from streams.commands import CommandError
    from streams.commands.produce import deliver
    from streams.forget import forget_request, forget_topic
    from streams.settings import get_settings

    settings = get_settings()
    try:
        request_id, key, value = forget_request(args.shop, args.customer)
    except ValueError as exc:
        raise CommandError(str(exc), 2) from None
    result = asyncio.run(deliver(settings, [(forget_topic(settings), key, codec.dumps(value))],
                                 delivery_timeout=args.delivery_timeout, total=1,
                                 show_progress=False))
    if result.error is not None:
        raise CommandError(f"the forget request was not acknowledged ({result.error}); "
                           "nothing was requested, run the command again")
    print(request_id)
    return 0
