"""NPS exported as summable counts, and the default process metrics."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from schemas.policy import PolicyBook
from scoring.shop import ShopTally
from streams.metrics import Metrics, add_process_metrics


def _samples(m: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(m.render().decode()) for s in fam.samples}


def _figures(promoters: int, passives: int, detractors: int) -> dict:
    tally = ShopTally()
    tally.nps_all = [promoters, passives, detractors]
    return tally.figures("shop-a", 20000, PolicyBook.load(None).for_shop("shop-a"))


def test_nps_counts_of_two_workers_sum_to_the_shop_nps() -> None:
    a, b = Metrics(), Metrics()
    a.set_shop_figures("shop-a", _figures(9, 0, 1))  # NPS 80 on its own
    b.set_shop_figures("shop-a", _figures(0, 0, 10))  # NPS -100 on its own
    shop = (("shop", "shop-a"),)
    sa, sb = _samples(a), _samples(b)
    promoters = sa[("loyalty_shop_nps_promoters", shop)] + sb[("loyalty_shop_nps_promoters", shop)]
    detractors = (sa[("loyalty_shop_nps_detractors", shop)]
                  + sb[("loyalty_shop_nps_detractors", shop)])
    responses = sa[("loyalty_shop_nps_responses", shop)] + sb[("loyalty_shop_nps_responses", shop)]
    assert (promoters, detractors, responses) == (9, 11, 20)
    assert 100 * (promoters - detractors) / responses == -10.0
    # The deprecated ratio is still there, and summing it would say -20: wrong.
    assert sa[("loyalty_shop_nps", shop)] + sb[("loyalty_shop_nps", shop)] == -20.0


def test_process_metrics_are_on_the_worker_registry() -> None:
    m = Metrics()
    assert not any(name.startswith("process_") for name, _ in _samples(m))
    add_process_metrics(m)
    names = {name for name, _ in _samples(m)}
    assert {"process_resident_memory_bytes", "process_cpu_seconds_total",
            "process_start_time_seconds", "python_info"} <= names
