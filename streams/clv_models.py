"""The latest fitted CLV model per shop, as one worker knows it.

Filled by :class:`streams.clv_service.ClvService` (its params-topic reader and
its refit) and read by every snapshot builder through
:meth:`streams.context.ServiceContext.clv_model`. Kept apart from the refit
service so the context can own it without importing the service.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from schemas import codec

if TYPE_CHECKING:
    from scoring.clv import ShopModel

log = logging.getLogger(__name__)


class ClvModels:
    """The latest model per shop (read by snapshot builders; written by the reader)."""

    def __init__(self) -> None:
        self._models: dict[str, ShopModel] = {}
        self.updated_at: float | None = None

    def get(self, shop_id: str) -> ShopModel | None:
        return self._models.get(shop_id)

    def put(self, shop_id: str, model: ShopModel) -> None:
        self._models[shop_id] = model
        self.updated_at = time.time()

    def apply_record(self, key: bytes | None, value: bytes | None) -> None:
        """Fold one params-topic record in; a malformed record is logged and ignored."""
        # scoring.clv pulls in scipy (most of a second): only a worker that
        # receives a model pays for it.
        from scoring.clv import ShopModel

        if key is None or value is None:
            return
        try:
            model = ShopModel.from_dict(codec.loads(value)["model"])
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring malformed CLV params record for %r: %s", key, exc)
            return
        self.put(key.decode("utf-8", "replace"), model)

    def __len__(self) -> int:
        return len(self._models)
