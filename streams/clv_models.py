"""The CLV models one worker serves: each shop's own fit and the pooled fits.

Filled by :class:`streams.clv_service.ClvService` (its params-topic reader and
its refit) and read by every snapshot builder through
:meth:`streams.context.ServiceContext.clv_model`. Kept apart from the refit
service so the context can own it without importing the service.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from schemas import codec
from scoring.rfm import RfmModel

if TYPE_CHECKING:
    from scoring.clv import ShopModel

log = logging.getLogger(__name__)

#: key prefix of a pooled model on the params topic ("|" cannot occur in a shop id)
POOLED_PREFIX = "|pooled|"


class ClvModels:
    """The latest fit per shop and per pool, and the model that scores each shop.

    Read by snapshot builders on every event (:meth:`get` is a dict lookup);
    written by the params-topic reader. ``on_change(shop, model_kind, degenerate)``
    is called whenever a shop's served model may have changed (metrics).
    """

    def __init__(self, on_change: Callable[[str, str | None, bool], None] | None = None) -> None:
        self._own: dict[str, tuple[ShopModel | None, str | None, str]] = {}
        self._pooled: dict[str, tuple[ShopModel | None, str | None]] = {}
        self._served: dict[str, ShopModel | None] = {}
        self._rfm: dict[str, RfmModel | None] = {}
        self._on_change = on_change
        self.updated_at: float | None = None

    def get(self, shop_id: str) -> ShopModel | None:
        """The model that scores ``shop_id``: its own if sound, else its pool's if sound, else None."""
        return self._served.get(shop_id)

    def rfm(self, shop_id: str) -> RfmModel | None:
        """The shop's RFM cut points from its last refit (None: not fitted, too few buyers)."""
        return self._rfm.get(shop_id)

    def put_shop(self, shop_id: str, model: ShopModel | None, reason: str | None, pool: str) -> None:
        if model is not None and reason is None and not model.sound:
            reason = model.problem  # never serve an unsound model, whatever the record says
        self._own[shop_id] = (model, reason, pool)
        self._refresh(shop_id)

    def put_pooled(self, pool: str, model: ShopModel | None, reason: str | None) -> None:
        self._pooled[pool] = (model, reason)
        for shop, (_m, _r, p) in self._own.items():
            if p == pool:
                self._refresh(shop)

    def _refresh(self, shop_id: str) -> None:
        model, reason, pool = self._own[shop_id]
        served: ShopModel | None = None
        if model is not None and reason is None:
            served = model
        else:
            pooled = self._pooled.get(pool, (None, None))[0]
            served = pooled if pooled is not None and pooled.sound else None
        self._served[shop_id] = served
        self.updated_at = time.time()
        if self._on_change is not None:
            self._on_change(shop_id, None if served is None else served.kind,
                            model is not None and not model.sound)

    def describe(self, shop_id: str) -> dict[str, Any]:
        """The ``clv`` object of ``GET /shops/{shop}`` (see ``scoring.clv.describe``)."""
        from scoring.clv import describe

        if shop_id not in self._own:
            return describe(None, None, "not fitted yet", None)
        model, reason, pool = self._own[shop_id]
        served = self._served.get(shop_id)
        pooled_reason = self._pooled.get(pool, (None, "no pooled model yet"))[1]
        if served is None and reason is not None and pooled_reason:
            reason += f"; pooled model: {pooled_reason}"
        return describe(served, model, reason, pool)

    def apply_record(self, key: bytes | None, value: bytes | None) -> None:
        """Fold one params-topic record in; a malformed record is logged and ignored."""
        from scoring.clv import ShopModel

        if key is None or value is None:
            return
        name = key.decode("utf-8", "replace")
        try:
            rec = codec.loads(value)
            raw = rec["model"]
            model = None if raw is None else ShopModel.from_dict(raw)
            reason = rec.get("reason")
            if model is None and not isinstance(reason, str):
                raise ValueError("a record without a model needs a reason")
            if reason is not None and not isinstance(reason, str):
                raise ValueError("'reason' must be a string or null")
            if name.startswith(POOLED_PREFIX):
                self.put_pooled(name[len(POOLED_PREFIX):], model, reason)
            else:
                pool = rec["pool"]
                if not isinstance(pool, str):
                    raise ValueError("'pool' must be a string")
                cuts = rec.get("rfm")  # absent in records of earlier versions
                self._rfm[name] = None if cuts is None else RfmModel.from_dict(cuts)
                self.put_shop(name, model, reason, pool)
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring malformed CLV params record for %r: %s", key, exc)

    def __len__(self) -> int:
        return sum(1 for m in self._served.values() if m is not None)
