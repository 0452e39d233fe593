"""Event contract v1: what shops send (DOMAIN.md, "Event contract v1").

Validation is strict, as the contract demands:

* integers must be JSON integers: a float (even ``5.0``) or a boolean is invalid;
* strings must be JSON strings: a number where a string is due is invalid;
* NaN and Infinity are not JSON and never parse;
* ``occurred_at`` is RFC 3339 with an explicit offset (``Z`` or ``+hh:mm``) and
  may not lie more than the policy's ``max_future_seconds`` (1 day) ahead of
  the wall clock;
* a message larger than 64 KiB is invalid before it is parsed;
* purchases and refunds must be in the shop's currency;
* unknown extra fields are ignored (and are not part of the event's content).

:func:`parse_event` is the only entry point. It never raises anything but
:class:`InvalidEvent`, whose ``reason`` is a short stable code (safe as a
metric label and dead-letter reason) and whose ``detail`` names the field.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    ValidationError,
    WithJsonSchema,
)

from schemas.codec import CodecError, loads
from schemas.policy import PolicyBook

MAX_EVENT_BYTES = 64 * 1024
#: upper bound of every amount and points count (DOMAIN.md): far above any real
#: figure, and low enough that sums and products of them stay exact 64-bit integers
MAX_AMOUNT = 10**12

EVENT_TYPES = ("purchase", "refund", "visit", "feedback", "redemption", "forget")

_RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$"
)


def parse_rfc3339(value: Any) -> datetime:
    """The instant of an RFC 3339 timestamp with an offset, as an aware UTC datetime.

    The one parser of event times (the contract's ``Timestamp``, the aligned
    input's time key, instants given on a command line). Raises ValueError
    with a message fit for a dead letter or a user for anything else: not a
    string, no offset, an impossible date, a year outside 1-9999 in UTC.
    Digits finer than a microsecond are truncated.
    """
    if not isinstance(value, str):
        raise ValueError("must be an RFC 3339 timestamp string")
    m = _RFC3339.match(value)
    if not m:
        raise ValueError("must be RFC 3339 with an offset, e.g. 2024-05-01T12:00:00Z or +02:00")
    frac = m.group(7) or ""
    # datetime keeps microseconds; finer digits are truncated (documented).
    text = f"{value[:19]}{frac[:7]}{'+00:00' if m.group(8) in 'Zz' else m.group(8)}"
    try:
        dt = datetime.fromisoformat(text.replace("t", "T"))
        return dt.astimezone(UTC)
    except ValueError as exc:
        raise ValueError(f"not a valid date/time: {exc}") from None
    except OverflowError:
        # e.g. 0001-01-01T00:00:00+01:00: before year 1 in UTC
        raise ValueError("outside the representable years 1-9999 once converted to UTC") from None


def _strict_rate(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("must be a JSON number between 0 and 1")
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError("must be finite")
        return Decimal(repr(value))  # the rate as written
    return Decimal(value)


Timestamp = Annotated[datetime, BeforeValidator(parse_rfc3339), WithJsonSchema({
    "type": "string", "format": "date-time", "pattern": _RFC3339.pattern,
    "description": "RFC 3339 with an offset (Z or +hh:mm); at most 1 day ahead of the wall clock"})]
# At most 18 decimal places: the exact rate's numerator and denominator then fit
# 64-bit integers, which states are written in (a finer rate broke the state's
# encoding once its order was finalized).
MarginRate = Annotated[Decimal, BeforeValidator(_strict_rate), Field(ge=0, le=1, decimal_places=18),
                       WithJsonSchema({
    "type": "number", "minimum": 0, "maximum": 1,
    "description": "exact decimal as written, e.g. 0.35; at most 18 decimal places"})]
Str128 = Annotated[StrictStr, Field(min_length=1, max_length=128)]
ShopId = Annotated[StrictStr, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")]
# "printable": no control characters (C0, DEL, C1).
CustomerId = Annotated[StrictStr, Field(min_length=1, max_length=128, pattern=r"^[^\x00-\x1f\x7f-\x9f]+$")]
Currency = Annotated[StrictStr, Field(pattern=r"^[A-Z]{3}$")]
Amount = Annotated[StrictInt, Field(gt=0, le=MAX_AMOUNT)]
Channel = Literal["store", "web", "app", "phone", "other"]


class _Event(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, strict=False)

    event_id: Str128
    shop_id: ShopId
    customer_id: CustomerId
    occurred_at: Timestamp


class Item(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    sku: Annotated[StrictStr, Field(min_length=1, max_length=128)]
    category: Annotated[StrictStr, Field(max_length=128)] | None = None
    quantity: Amount
    unit_amount: Annotated[StrictInt, Field(ge=0, le=MAX_AMOUNT)]


class Purchase(_Event):
    type: Literal["purchase"]
    order_id: Str128
    amount: Amount
    currency: Currency
    margin_rate: MarginRate | None = None
    items: Annotated[list[Item], Field(max_length=500)] | None = None
    channel: Channel | None = None


class Refund(_Event):
    type: Literal["refund"]
    order_id: Str128
    amount: Amount
    currency: Currency


class Visit(_Event):
    type: Literal["visit"]
    channel: Channel | None = None


class Feedback(_Event):
    type: Literal["feedback"]
    nps: Annotated[StrictInt, Field(ge=0, le=10)]
    comment: Annotated[StrictStr, Field(max_length=2000)] | None = None
    share_of_wallet: Annotated[StrictInt, Field(ge=0, le=100)] | None = None
    touchpoint: Annotated[StrictStr, Field(max_length=64)] | None = None


class Redemption(_Event):
    type: Literal["redemption"]
    points: Amount
    reward: Annotated[StrictStr, Field(max_length=64)] | None = None


class Forget(_Event):
    """A right-to-erasure request: forget the customer (``scoring.fold.forget``).

    Not a customer event: ``event_id`` is the request's id and ``occurred_at``
    the time of the request, which orders it among the customer's events.
    The fold never sees it; the service and the replay drop the customer's
    state where it falls.
    """

    type: Literal["forget"]


Event = Purchase | Refund | Visit | Feedback | Redemption | Forget

MODELS: dict[str, type[_Event]] = {
    "purchase": Purchase,
    "refund": Refund,
    "visit": Visit,
    "feedback": Feedback,
    "redemption": Redemption,
    "forget": Forget,
}


class InvalidEvent(ValueError):
    """An input record violates the contract. Nothing was applied.

    ``reason`` is one of a small fixed set of codes (see :data:`REASONS`);
    ``detail`` is a human sentence naming the offending field.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


REASONS = (
    "too_large", "invalid_encoding", "invalid_json", "not_an_object", "unknown_type",
    "missing_field", "wrong_type", "out_of_range", "invalid_format", "invalid_timestamp",
    "future_timestamp", "currency_mismatch",
)

_PYDANTIC_REASON = {
    "missing": "missing_field",
    "int_type": "wrong_type", "int_from_float": "wrong_type", "string_type": "wrong_type",
    "list_type": "wrong_type", "model_type": "wrong_type", "model_attributes_type": "wrong_type",
    "dict_type": "wrong_type", "decimal_type": "wrong_type", "bool_type": "wrong_type",
    "greater_than": "out_of_range", "greater_than_equal": "out_of_range", "decimal_max_places": "out_of_range",
    "less_than": "out_of_range", "less_than_equal": "out_of_range",
    "string_too_short": "out_of_range", "string_too_long": "out_of_range",
    "too_long": "out_of_range", "too_short": "out_of_range",
    "string_pattern_mismatch": "invalid_format", "literal_error": "invalid_format",
}


def _reason_from(error: ValidationError) -> InvalidEvent:
    first = error.errors(include_url=False)[0]
    loc = ".".join(str(p) for p in first["loc"]) or "event"
    kind = first["type"]
    reason = _PYDANTIC_REASON.get(kind)
    if reason is None:
        reason = "invalid_timestamp" if loc == "occurred_at" else (
            "wrong_type" if "type" in kind or "must be" in first["msg"] else "invalid_format")
    return InvalidEvent(reason, f"{loc}: {first['msg']}")


_HUGE = 2**63


def _has_huge_float(data: dict[str, Any]) -> bool:
    """True if a top-level or item value is a float of 64-bit magnitude or more.

    orjson decodes integer literals beyond 64 bits as floats; such a literal
    must be reported as an out-of-range integer, not as a float.
    """
    for v in data.values():
        if isinstance(v, float) and abs(v) >= _HUGE:
            return True
        if isinstance(v, list):
            for item in v[:500]:
                if isinstance(item, dict) and _has_huge_float(item):
                    return True
    return False


def _exact_decode(raw: bytes) -> Any:
    """Decode with Python's exact integers (rare path: only for huge numbers).

    Float literals stay floats, so ``1e30`` is still a wrong type, while
    ``10**30`` written as digits becomes an int and fails its field's bound as
    ``out_of_range``. Integers of more than 40 digits are read as a 41-digit
    one (every bound fails the same way, and nothing converts thousands of
    digits). Raises ValueError when the stdlib decoder refuses the bytes.
    """
    import json

    def bounded_int(text: str) -> int:
        return int(text) if len(text) <= 40 else (-1 if text[0] == "-" else 1) * 10**40

    def no_constants(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    try:
        return json.loads(raw, parse_int=bounded_int, parse_constant=no_constants)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def parse_event(raw: bytes | str, *, now: datetime, policies: PolicyBook) -> Event:
    """Decode and validate one message value.

    ``now`` is the wall clock used for the future-timestamp rule (aware).
    Raises :class:`InvalidEvent`; never anything else for any input bytes.
    """
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "surrogatepass")
    if len(raw) > MAX_EVENT_BYTES:
        raise InvalidEvent("too_large", f"message is {len(raw)} bytes; the limit is {MAX_EVENT_BYTES}")
    try:
        data = loads(raw)
    except CodecError as exc:
        msg = str(exc)
        data = None
        if "infinity when parsed as double" in msg:  # an integer literal of 309+ digits
            try:
                data = _exact_decode(raw)
            except ValueError:
                data = None
        if data is None:
            reason = "invalid_encoding" if "utf-8" in msg.lower() or "surrogates" in msg else "invalid_json"
            raise InvalidEvent(reason, msg) from None
    if isinstance(data, dict) and _has_huge_float(data):
        try:
            data = _exact_decode(raw)
        except ValueError:
            pass  # orjson accepted it: keep orjson's reading
    if not isinstance(data, dict):
        raise InvalidEvent("not_an_object", f"the message is a JSON {type(data).__name__}, not an object")
    kind = data.get("type")
    model = MODELS.get(kind) if isinstance(kind, str) else None
    if model is None:
        if "type" not in data:
            raise InvalidEvent("missing_field", "type: Field required")
        raise InvalidEvent("unknown_type", f"type: {kind!r} is not one of {', '.join(EVENT_TYPES)}")
    try:
        event = model.model_validate(data)
    except ValidationError as exc:
        raise _reason_from(exc) from None
    policy = policies.for_shop(event.shop_id)
    if event.occurred_at > now + timedelta(seconds=policy.max_future_seconds):
        raise InvalidEvent("future_timestamp",
                           f"occurred_at: {event.occurred_at.isoformat()} is more than "
                           f"{policy.max_future_seconds}s ahead of the clock ({now.isoformat()})")
    # Not getattr(event, "currency", None): a missing attribute goes through
    # pydantic's __getattr__ and an exception, for half of all events.
    currency = event.currency if isinstance(event, Purchase | Refund) else None
    if currency is not None and currency != policy.currency:
        raise InvalidEvent("currency_mismatch",
                           f"currency: {currency} but shop {event.shop_id} settles in {policy.currency}")
    return event  # type: ignore[return-value]
