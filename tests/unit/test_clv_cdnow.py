"""Acceptance tests of scoring.clv on the CDNOW data set (Fader, Hardie & Lee 2005).

Setup as in the paper: weeks, same-day purchases merged, calibration = the first 39
weeks (transactions through 1997-09-30), the whole cohort (every customer made the
first purchase in Q1 1997), T = 1997-09-30 - first purchase.

Published values are for the paper's 1/10 random *sample* (2 357 customers):
BG/NBD r=0.243, alpha=4.414, a=0.793, b=2.426 (LL -9582.4); Gamma-Gamma p=6.25,
q=3.74, gamma=15.44 dollars.  We fit the full cohort (23 570 customers), so we do not
expect those numbers exactly; the tests instead check, with stated reasons:

1. the fit against an independent optimiser and likelihood implementation (tight);
2. the published sample values against the full-cohort fit with a likelihood-ratio
   bound derived from the sampling error of a 1/10 sample (statistically justified);
3. pinned full-cohort values (regression; values confirmed by 1.);
4. in-sample and hold-out predictions against the actual purchase counts.

Missing data makes these tests FAIL (FileNotFoundError with the expected path), never
skip.
"""

from __future__ import annotations

import functools
import math
import time
from datetime import date

import numpy as np
import pytest
from scipy import optimize, special

from scoring import clv
from scoring.clv import BgNbdParams, GammaGammaParams, ShopModel
from tests.cdnow import CALIBRATION_END, CDNOW_PATH, calibration_stats, load_transactions

HOLDOUT_END = date(1998, 6, 30)
PUBLISHED_BG = BgNbdParams(r=0.243, alpha=4.414, a=0.793, b=2.426)
PUBLISHED_GG = GammaGammaParams(p=6.25, q=3.74, gamma=1544.0)  # $15.44 in cents
SAMPLE_FRACTION = 2357 / 23570

# Full-cohort MLE (weeks; gamma in cents) obtained with this implementation and
# confirmed to ~1e-7 by the independent optimiser in test_bgnbd_independent_optimiser /
# test_gamma_gamma_independent_optimiser.
FULL_BG = BgNbdParams(r=0.251624, alpha=4.78894, a=0.723434, b=2.16109)
FULL_BG_LL = -95368.4439
FULL_GG = GammaGammaParams(p=6.27536, q=3.62445, gamma=1498.369)


@functools.lru_cache(maxsize=1)
def _data() -> dict[str, object]:
    """Load once per session; raised errors surface in each calling test as a failure."""
    tr = load_transactions(CDNOW_PATH)
    cal = calibration_stats(tr, CALIBRATION_END)
    ids = sorted(cal)
    stats = [cal[c] for c in ids]
    arr = np.array(stats, dtype=np.int64)
    holdout_days: dict[str, set[date]] = {}
    for t in tr:
        if CALIBRATION_END < t.day <= HOLDOUT_END:
            holdout_days.setdefault(t.customer_id, set()).add(t.day)
    t0 = time.perf_counter()
    model = clv.fit_shop(stats, 7, as_of=CALIBRATION_END)
    fit_s = time.perf_counter() - t0
    return {
        "transactions": tr,
        "ids": ids,
        "stats": stats,
        "x": arr[:, 0].astype(float),
        "t_x": arr[:, 1] / 7.0,
        "T": arr[:, 2] / 7.0,
        "spend": arr[:, 3].astype(float),
        "holdout": np.array([len(holdout_days.get(c, ())) for c in ids], dtype=float),
        "model": model,
        "fit_seconds": fit_s,
    }


def _hessian(f, theta: np.ndarray, h: float = 1e-4) -> np.ndarray:  # type: ignore[no-untyped-def]
    """Central-difference Hessian of f at theta (accurate to ~h^2)."""
    k = len(theta)
    H = np.empty((k, k))
    eye = np.eye(k) * h
    for i in range(k):
        for j in range(i, k):
            H[i, j] = H[j, i] = (
                f(theta + eye[i] + eye[j]) - f(theta + eye[i] - eye[j])
                - f(theta - eye[i] + eye[j]) + f(theta - eye[i] - eye[j])
            ) / (4 * h * h)
    return H


def test_cdnow_file_present_and_shaped() -> None:
    assert CDNOW_PATH.is_file(), (
        f"CDNOW data missing at {CDNOW_PATH}: it ships with the repository as "
        "data/cdnow_master.txt"
    )
    d = _data()
    tr = d["transactions"]
    assert len(tr) == 69_659
    assert len({t.customer_id for t in tr}) == 23_570
    assert min(t.day for t in tr) == date(1997, 1, 1)
    assert max(t.day for t in tr) == HOLDOUT_END
    # the cohort: every customer's first purchase is in Q1 1997, so all are in calibration
    assert len(d["stats"]) == 23_570
    T_days = np.array([s[2] for s in d["stats"]])
    # first purchases span 1997-01-01 .. 1997-03-25
    assert T_days.max() == 272 and T_days.min() == (CALIBRATION_END - date(1997, 3, 25)).days
    x = d["x"]
    assert int(x.sum()) == 24_337 and int((x > 0).sum()) == 9_451


def test_bgnbd_fit_full_cohort_pinned() -> None:
    m: ShopModel = _data()["model"]
    bg = m.bgnbd
    print(f"\nCDNOW BG/NBD full cohort (weeks): {bg} LL={m.log_likelihood:.4f} "
          f"fit_shop {_data()['fit_seconds']:.3f}s")
    assert m.customers == 23_570 and m.repeat_customers == 9_451 and m.unit_days == 7
    assert m.fitted_as_of == CALIBRATION_END
    # 1e-4 relative: far above optimiser noise (~1e-7), far below any modelling change.
    for k in ("r", "alpha", "a", "b"):
        assert getattr(bg, k) == pytest.approx(getattr(FULL_BG, k), rel=1e-4), k
    assert m.log_likelihood == pytest.approx(FULL_BG_LL, abs=1e-3)


def test_bgnbd_consistent_with_published_sample_values() -> None:
    """Published sample parameters vs our full-cohort fit, by a likelihood-ratio bound.

    If the sample's MLE theta_s differs from the full-cohort MLE theta_f only by
    sampling error, then (theta_s - theta_f) ~ N(0, I_s^-1) with I_s ~ I_f / 10 (a 1/10
    sample carries a tenth of the information), so the full-data log-likelihood drop
        LL_f(theta_f) - LL_f(theta_s) ~ 1/2 (theta_s-theta_f)' I_f (theta_s-theta_f)
    is distributed as 10/2 * chi2_4.  Its 99.9% quantile is 5 * 18.47 = 92.3: a correct
    implementation passes (we get ~5.6) while e.g. a days/weeks or T-definition mistake
    moves the optimum far outside.  The marginal version is also checked: every
    log-parameter within 3.5 sample standard errors (sqrt(10) x the full-cohort
    standard errors from the observed information).
    """
    d = _data()
    m: ShopModel = d["model"]
    x, t_x, T = d["x"], d["t_x"], d["T"]
    ll_pub = float(clv.bgnbd_log_likelihood(PUBLISHED_BG, x, t_x, T).sum())
    drop = m.log_likelihood - ll_pub
    assert 0.0 <= drop <= 0.5 / SAMPLE_FRACTION * 18.4668, drop

    def total(theta: np.ndarray) -> float:
        return float(clv.bgnbd_log_likelihood(BgNbdParams(*np.exp(theta)), x, t_x, T).sum())

    bg = m.bgnbd
    th = np.log([bg.r, bg.alpha, bg.a, bg.b])
    se_full = np.sqrt(np.diag(np.linalg.inv(-_hessian(total, th))))
    se_sample = se_full / math.sqrt(SAMPLE_FRACTION)
    pub = np.log([PUBLISHED_BG.r, PUBLISHED_BG.alpha, PUBLISHED_BG.a, PUBLISHED_BG.b])
    z = (pub - th) / se_sample
    assert np.all(np.abs(z) < 3.5), (z, se_sample)
    # the per-customer log-likelihood of the sample (-9582.4 / 2357) is of the same size
    assert m.log_likelihood / m.customers == pytest.approx(-9582.4 / 2357, abs=0.1)


def _straightforward_bgnbd_nll(theta: np.ndarray, x: np.ndarray, t_x: np.ndarray,
                               T: np.ndarray) -> float:
    """Paper eq. (6) written plainly, not in log space: L = A * (B + C) with gamma and
    beta functions evaluated directly (fine for CDNOW: x <= 80, T < 39 weeks)."""
    r, alpha, a, b = theta
    if min(theta) <= 0:
        return math.inf
    common = special.gamma(r + x) * alpha**r / special.gamma(r) / special.beta(a, b)
    stay = special.beta(a, b + x) / (alpha + T) ** (r + x)
    drop = np.where(
        x > 0, special.beta(a + 1, np.maximum(b + x - 1, 1e-300)) / (alpha + t_x) ** (r + x), 0.0
    )
    return -float(np.sum(np.log(common * (stay + drop))))


def test_bgnbd_independent_optimiser() -> None:
    """Nelder-Mead on raw parameters, a plain likelihood, a different start (0.5, 2, 0.5,
    1.5): parameters agree to 1e-4 relative (the brief asks ~1e-3; we see ~1e-7) and the
    maximised log-likelihoods to 1e-9 relative."""
    d = _data()
    x, t_x, T = d["x"], d["t_x"], d["T"]
    res = optimize.minimize(
        _straightforward_bgnbd_nll, [0.5, 2.0, 0.5, 1.5], args=(x, t_x, T), method="Nelder-Mead",
        options={"xatol": 1e-9, "fatol": 1e-9, "maxiter": 20_000, "maxfev": 20_000,
                 "adaptive": True},
    )
    assert res.success, res.message
    m: ShopModel = d["model"]
    for got, want in zip(res.x, (m.bgnbd.r, m.bgnbd.alpha, m.bgnbd.a, m.bgnbd.b), strict=True):
        assert got == pytest.approx(want, rel=1e-4)
    assert -res.fun == pytest.approx(m.log_likelihood, rel=1e-9)


def _gg_data() -> tuple[np.ndarray, np.ndarray]:
    d = _data()
    sel = (d["x"] > 0) & (d["spend"] > 0)
    return d["x"][sel], d["spend"][sel] / d["x"][sel]


def test_gamma_gamma_fit_full_cohort() -> None:
    """Gamma-Gamma on the 9 450 repeat buyers with positive repeat spend (one repeat
    buyer spent $0 on repeat days and is excluded), mean spend per repeat day in cents.

    Pinned full-cohort values (1e-4), the published sample values by the same
    likelihood-ratio argument as for BG/NBD (3 parameters: 5 * chi2_3(0.999) = 81.3;
    we get ~2.2), and plausibility: the implied population mean spend per purchase
    day p*gamma/(q-1) must be within 5% of the observed mean of the customers' means
    (we get $35.83 vs $35.63).
    """
    m: ShopModel = _data()["model"]
    gg = m.gamma_gamma
    assert gg is not None and m.gg_customers == 9_450
    print(f"\nCDNOW Gamma-Gamma full cohort (cents): {gg} LL={m.gg_log_likelihood:.4f}")
    for k in ("p", "q", "gamma"):
        assert getattr(gg, k) == pytest.approx(getattr(FULL_GG, k), rel=1e-4), k
    x, mbar = _gg_data()
    ll_pub = float(clv.gamma_gamma_log_likelihood(PUBLISHED_GG, x, mbar).sum())
    assert m.gg_log_likelihood is not None
    drop = m.gg_log_likelihood - ll_pub
    assert 0.0 <= drop <= 0.5 / SAMPLE_FRACTION * 16.2662, drop
    assert gg.population_mean == pytest.approx(float(mbar.mean()), rel=0.05)


def test_gamma_gamma_independent_optimiser() -> None:
    """Nelder-Mead on raw (p, q, gamma) with the likelihood written out in *dollars*
    from a different start (1, 1.5, 10): same p, q (unit-free) and gamma / 100."""
    x, mbar = _gg_data()
    md = mbar / 100.0

    def nll(th: np.ndarray) -> float:
        p, q, g = th
        if min(th) <= 0:
            return math.inf
        px = p * x
        return -float(np.sum(
            special.gammaln(px + q) - special.gammaln(px) - special.gammaln(q) + q * np.log(g)
            + (px - 1) * np.log(md) + px * np.log(x) - (px + q) * np.log(g + md * x)
        ))

    res = optimize.minimize(
        nll, [1.0, 1.5, 10.0], method="Nelder-Mead",
        options={"xatol": 1e-9, "fatol": 1e-9, "maxiter": 20_000, "maxfev": 20_000,
                 "adaptive": True},
    )
    assert res.success, res.message
    gg = _data()["model"].gamma_gamma
    assert res.x[0] == pytest.approx(gg.p, rel=1e-4)
    assert res.x[1] == pytest.approx(gg.q, rel=1e-4)
    assert res.x[2] == pytest.approx(gg.gamma / 100.0, rel=1e-4)
    # LL in dollars = LL in cents + n ln 100 (density Jacobian)
    m = _data()["model"]
    assert -res.fun == pytest.approx(m.gg_log_likelihood + len(x) * math.log(100.0), rel=1e-9)


def test_in_sample_and_holdout_predictions() -> None:
    """Predictions against what the customers actually did.

    In-sample: summing the unconditional expectation E[X(T_i)] (the closed form at
    x = 0, T = 0) over customers must reproduce the 24 337 calibration repeat purchase
    days within 2% (we get +0.5%); a wrong unit or T definition misses by far more.

    Hold-out (weeks 40-78, 1997-10-01..1998-06-30, 39 weeks): the conditional
    expectations summed give 16 874 against 19 684 actual purchase days, i.e. BG/NBD
    under-forecasts this cohort's hold-out by ~14% (with the published parameters:
    16 577).  That is the model, not the arithmetic: the closed form is checked against
    quadrature and simulation in test_clv.py, and the unconditional forecast of the same
    period agrees (16 849).  Bounds: total within 20%, and the mean hold-out purchases
    by calibration frequency (x = 0..6, 7+) predicted within 35%, increasing in x like
    the actuals, with the best-measured groups (x >= 3) within 15%.
    """
    d = _data()
    m: ShopModel = d["model"]
    bg = m.bgnbd
    x, t_x, T, hold = d["x"], d["t_x"], d["T"], d["holdout"]
    uniq_T, counts = np.unique(T, return_counts=True)
    in_sample = sum(
        c * clv.expected_purchases(bg, float(t), 0, 0.0, 0.0)
        for t, c in zip(uniq_T, counts, strict=True)
    )
    assert in_sample == pytest.approx(x.sum(), rel=0.02)

    horizon = (HOLDOUT_END - CALIBRATION_END).days / 7.0
    pred = clv.expected_purchases(bg, horizon, x, t_x, T)
    assert float(pred.sum()) == pytest.approx(float(hold.sum()), rel=0.20)
    groups = [x == k for k in range(7)] + [x >= 7]
    actual_means = [float(hold[g].mean()) for g in groups]
    pred_means = [float(pred[g].mean()) for g in groups]
    assert all(np.diff(pred_means) > 0) and all(np.diff(actual_means) > 0)
    for k, (p, a) in enumerate(zip(pred_means, actual_means, strict=True)):
        assert p == pytest.approx(a, rel=0.35 if k < 3 else 0.15), (k, p, a)


def test_score_on_cdnow_customers() -> None:
    """score() on real histories: JSON-ready, consistent with the closed forms, and the
    days-based entry gives the same P(alive) as the week-based closed form."""
    d = _data()
    m: ShopModel = d["model"]
    from fractions import Fraction

    for s in d["stats"][:200]:
        out = clv.score(m, *s, Fraction(1, 4))
        x, txd, Td, spend = s
        assert out["p_alive"] == round(clv.p_alive(m.bgnbd, x, txd / 7, Td / 7), 6)
        assert isinstance(out["expected_avg_value"], int) and out["expected_avg_value"] > 0
        assert isinstance(out["clv_365d"], int) and out["clv_365d"] >= 0


def test_fit_speed() -> None:
    """Performance guard (generous, to stay robust on slow CI): the CDNOW cohort fits in
    well under a second on a 2-core machine, 100 000 synthetic customers in well under
    5 s; the bounds below are 10x-20x that."""
    assert _data()["fit_seconds"] < 10.0
    rng = np.random.default_rng(5)
    n = 100_000
    lam = rng.gamma(0.8, 1 / 40.0, n)
    p = rng.beta(0.8, 2.5, n)
    T = rng.integers(1, 366, n)
    N = rng.poisson(lam * T)
    x = np.minimum(N, rng.geometric(p))
    t_x = np.where(x > 0, np.ceil(T * rng.beta(np.maximum(x, 1), N - x + 1)), 0).astype(int)
    x = np.minimum(x, t_x)
    spend = x * rng.integers(500, 5000, n)
    stats = list(zip(x.tolist(), t_x.tolist(), T.tolist(), spend.tolist(), strict=True))
    t0 = time.perf_counter()
    model = clv.fit_shop(stats, 1)
    secs = time.perf_counter() - t0
    print(f"\nfit_shop on 100 000 synthetic customers (days): {secs:.3f}s -> {model.bgnbd}")
    assert secs < 60.0


def test_fit_diagnostics_full_cohort() -> None:
    """Both full-cohort fits are sound.  Their standard errors (central differences of
    the analytic gradient) equal those from an independent Hessian (four-point
    differences of the plain paper likelihood, raw parameters) to 1%, and they are
    small: 1.7% (r) to 9.2% (b) of the estimates."""
    d = _data()
    m: ShopModel = d["model"]
    assert m.sound and m.problem is None
    assert m.bgnbd_fit is not None and m.gg_fit is not None
    assert m.bgnbd_fit.log_likelihood == pytest.approx(m.log_likelihood, rel=1e-12)
    bg = m.bgnbd
    theta = np.array([bg.r, bg.alpha, bg.a, bg.b])
    H = _hessian(lambda th: _straightforward_bgnbd_nll(th, d["x"], d["t_x"], d["T"]), theta)
    want = np.sqrt(np.diag(np.linalg.inv(H)))
    for name, se, t in zip(("r", "alpha", "a", "b"), want, theta, strict=True):
        assert m.bgnbd_fit.std_errors[name] == pytest.approx(se, rel=0.01), name
        assert 0.01 < se / t < 0.1
    gg = m.gamma_gamma
    assert gg is not None
    x, mbar = _gg_data()
    gth = np.array([gg.p, gg.q, gg.gamma])
    # gamma (~1500 cents) needs a step on its own scale: rescale to O(1) first
    scale = np.array([1.0, 1.0, gg.gamma])
    Hs = _hessian(lambda th: -float(clv.gamma_gamma_log_likelihood(
        GammaGammaParams(*(th * scale)), x, mbar).sum()), gth / scale)
    want_g = np.sqrt(np.diag(np.linalg.inv(Hs))) * scale
    for name, se in zip(("p", "q", "gamma"), want_g, strict=True):
        assert m.gg_fit.std_errors[name] == pytest.approx(se, rel=0.01), name


def test_small_shop_scored_by_the_pooled_model_ranks_like_the_full_cohort() -> None:
    """A 150-customer shop cut from CDNOW, next to a 5 000-customer shop cut from the
    rest: the small shop is below the minimum, so it is scored by the pooled model of
    both.  Its values are finite and sensible, and its customers rank like the
    full-cohort fit's: Spearman 0.994 on clv_365d (0.9993 on expected purchases;
    measured over five random cuts: 0.993-0.998).  Its own fit ranks them worse (0.97
    here, 0.78-0.97 over those cuts, two of five degenerate)."""
    from fractions import Fraction

    from scipy.stats import spearmanr

    from schemas.policy import PolicyBook

    stats = _data()["stats"]
    idx = np.random.default_rng(16).permutation(len(stats))
    small = [stats[i] for i in idx[:150]]
    big = [stats[i] for i in idx[150:5150]]
    fits = clv.fit_models_for({"big": big, "small": small}, PolicyBook(), 7)
    assert "150 buyers, fewer than the minimum 200" == fits.shops["small"].reason
    pooled = fits.select("small")
    assert pooled is not None and pooled.kind == "pooled" and pooled.sound
    assert pooled.customers == 5150 and fits.select("big").kind == "shop"  # type: ignore[union-attr]
    full: ShopModel = _data()["model"]

    def column(m: ShopModel, key: str) -> np.ndarray:
        return np.array([clv.score(m, *s, Fraction(1, 4))[key] for s in small], dtype=float)

    got = {k: column(pooled, k) for k in ("p_alive", "expected_purchases_90d",
                                            "expected_avg_value", "clv_365d")}
    assert all(np.all(np.isfinite(v)) for v in got.values())
    assert np.all((got["p_alive"] > 0) & (got["p_alive"] <= 1))
    assert np.all((got["expected_purchases_90d"] >= 0) & (got["expected_purchases_90d"] < 13))
    gg = pooled.gamma_gamma
    assert gg is not None
    # posterior mean spends shrink towards the pool mean: within a plausible band of it
    assert np.all((got["expected_avg_value"] > 0.2 * gg.population_mean)
                  & (got["expected_avg_value"] < 10 * gg.population_mean))
    rho_clv = spearmanr(got["clv_365d"], column(full, "clv_365d")).statistic
    rho_e90 = spearmanr(got["expected_purchases_90d"], column(full, "expected_purchases_90d")).statistic
    assert rho_clv > 0.99 and rho_e90 > 0.995, (rho_clv, rho_e90)
    own = clv.fit_shop(small, 7)
    assert spearmanr(column(own, "clv_365d"), column(full, "clv_365d")).statistic < rho_clv


def test_spend_floor_keeps_a_one_cent_buyer_out_of_gamma_gamma() -> None:
    """One added repeat buyer with a 1-cent mean spend moves the unprotected Gamma-Gamma
    fit (p -11%, gamma +17%); with the default floor (1% of the median mean spend) the
    buyer is left out and the fit is the one without it.  CDNOW itself has no mean
    below 1% of the median ($0.27; the smallest is $1.63), so the floor changes nothing
    there."""
    stats = list(_data()["stats"])
    base = clv.fit_shop(stats, 7, spend_floor=0.01)
    assert base.gg_excluded == 0 and base.gamma_gamma == _data()["model"].gamma_gamma
    poisoned = stats + [(1, 7, 100, 1)]
    raw = clv.fit_shop(poisoned, 7)
    robust = clv.fit_shop(poisoned, 7, spend_floor=0.01)
    assert raw.gamma_gamma is not None and robust.gamma_gamma is not None and base.gamma_gamma
    assert raw.gamma_gamma.p / base.gamma_gamma.p - 1 == pytest.approx(-0.11, abs=0.01)
    assert raw.gamma_gamma.gamma / base.gamma_gamma.gamma - 1 == pytest.approx(0.17, abs=0.01)
    assert robust.gg_excluded == 1
    for k in ("p", "q", "gamma"):
        assert getattr(robust.gamma_gamma, k) == pytest.approx(getattr(base.gamma_gamma, k), rel=1e-6)
    with pytest.raises(ValueError):
        clv.fit_shop(stats, 7, spend_floor=1.0)


def test_replay_scores_small_shops_with_the_pooled_model() -> None:
    """`loyalty replay`'s snapshots use the one eligibility rule and the pooled fallback:
    1 500 CDNOW customers in one shop, 150 in another, as of the calibration end."""
    from datetime import UTC, datetime
    from fractions import Fraction

    from schemas.codec import dumps, loads
    from schemas.outputs import CustomerSnapshot
    from schemas.policy import PolicyBook
    from scoring.replay import replay

    lines = []
    for i, t in enumerate(_data()["transactions"]):
        n = int(t.customer_id)
        if t.amount_cents and n <= 1650:
            lines.append(dumps({
                "type": "purchase", "event_id": f"t{i}", "shop_id": "big" if n <= 1500 else "small",
                "customer_id": t.customer_id, "occurred_at": f"{t.day.isoformat()}T12:00:00Z",
                "order_id": f"t{i}", "amount": t.amount_cents, "currency": "USD"}))
    as_of = datetime(1997, 9, 30, 23, 59, 59, tzinfo=UTC)
    rows = replay(lines, policies=PolicyBook(), as_of=as_of)
    kinds = {(r["shop_id"], r["clv_model"]) for r in rows}
    assert kinds == {("big", "shop"), ("small", "pooled")}
    small = [r for r in rows if r["shop_id"] == "small"]
    assert all(r["p_alive"] is not None and r["clv_365d"] is not None for r in small)
    CustomerSnapshot.model_validate(loads(dumps(small[0])))
    # a policy can turn the pooled fallback into a per-group one, and the group is used
    book = PolicyBook(shops={"small": {"clv_pool": "solo"}})
    solo = [r for r in replay(lines, policies=book, as_of=as_of) if r["shop_id"] == "small"]
    # alone in its pool, the shop is scored by a pooled fit of just its own customers
    stats = calibration_stats([t for t in _data()["transactions"]
                               if t.amount_cents and 1500 < int(t.customer_id) <= 1650])
    alone = clv.fit_shop(list(stats.values()), 7, kind="pooled", spend_floor=0.01)
    assert alone.sound  # measured; a degenerate one would leave the fields null
    want = clv.score(alone, *stats[solo[0]["customer_id"]], Fraction(1))
    assert {r["clv_model"] for r in solo} == {"pooled"}
    assert {k: solo[0][k] for k in want} == want
