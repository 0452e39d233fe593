"""Probabilistic customer-lifetime value: BG/NBD purchase model + Gamma-Gamma spend model.

Pure domain core (numpy/scipy only, no I/O, no streaming imports).

Models
------
* BG/NBD (Fader, Hardie & Lee 2005, "Counting your customers the easy way"): while
  alive, a customer makes purchases as a Poisson process with rate ``lambda ~
  Gamma(shape r, rate alpha)``; right after every repeat purchase the customer drops
  out with probability ``p ~ Beta(a, b)``.  A customer with no repeat purchase is
  therefore alive with probability 1 by construction (a known limitation of BG/NBD).
* Gamma-Gamma (Fader, Hardie & Lee 2005, "RFM and CLV"; Fader & Hardie 2013 note): the
  value of each repeat purchase is Gamma(p, nu) with ``nu ~ Gamma(q, gamma)``,
  independent of the purchase process.

Per-customer sufficient statistics (computed by the caller from the customer state):

* ``x``       repeat purchase *days* (``purchase_days - 1``; same-day purchases merged),
* ``t_x``     last purchase date - first purchase date (days),
* ``T``       as-of date - first purchase date (days),
* ``repeat_spend`` net spend in integer minor units on the repeat purchase days (the
  first purchase day excluded); the mean repeat spend is ``m = repeat_spend / x``.

Time unit: parameters are fitted in a unit of ``unit_days`` days (1 = days, 7 = weeks,
as in the paper).  ``alpha`` (and every ``t``/``t_x``/``T`` passed to the closed forms
below) is in that unit; the day-based entry points :func:`fit_shop` and :func:`score`
do the conversion.  Money: ``gamma`` of the Gamma-Gamma model is in minor units, so
expected spend comes out in minor units.

Numerics: log-likelihoods are evaluated in log space with ``gammaln``/``betaln`` and a
log-sum-exp for the two-term BG/NBD likelihood, so large ``x`` and ``T`` neither
overflow nor underflow.  The conditional expectation uses the Euler-transformed
hypergeometric form summed as a series without removable singularities, with hyp2f1
and quadrature fallbacks (see :func:`_future_core`); it agrees with independent
quadrature to ~1e-8 relative or better.

Speed: fitting is vectorised (identical rows merged, x-only gamma-function terms
evaluated once per distinct x); see the README for measured times.

Trust: every fit carries :class:`FitDiagnostics` (convergence, log-likelihood, Hessian
standard errors, a ``degenerate`` flag with its reason).  Small or pathological shops
(a handful of customers, nobody dropping out, identical histories) give legitimate but
meaningless maximum-likelihood estimates far out in parameter space; fitting still
succeeds and :func:`score` stays total (a quantity it cannot evaluate is reported as
null), but such a model is not :attr:`ShopModel.sound` and must not be served.
:func:`ineligibility` is the one rule for which shops get a fit of their own and
:func:`fit_models` adds the pooled fallback for the others.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from fractions import Fraction
from typing import Any

import numpy as np
from scipy import integrate, optimize, special

__all__ = [
    "BgNbdParams",
    "GammaGammaParams",
    "ShopModel",
    "MODEL_VERSION",
    "MIN_GG_CUSTOMERS",
    "bgnbd_log_likelihood",
    "gamma_gamma_log_likelihood",
    "fit_bgnbd",
    "fit_gamma_gamma",
    "p_alive",
    "expected_purchases",
    "expected_avg_value",
    "fit_shop",
    "score",
    "FitDiagnostics",
    "bgnbd_diagnostics",
    "gamma_gamma_diagnostics",
    "MIN_CUSTOMERS",
    "MIN_REPEAT_BUYERS",
    "ineligibility",
    "ShopFit",
    "ClvFits",
    "fit_models",
    "fit_models_for",
    "pool_name",
    "describe",
]

MODEL_VERSION = 2
#: ``ShopModel.kind``: fitted on the shop's own customers, or on a pool of shops.
MODEL_KINDS = ("shop", "pooled")
#: Fewest customers with x > 0 and positive repeat spend needed to fit Gamma-Gamma.
#: Below this the three-parameter MLE is dominated by noise (and with all-equal spends
#: it runs off to infinity), so the shop model carries no spend model instead.
MIN_GG_CUSTOMERS = 10

# Optimisation happens on log-parameters; these box bounds (e^-20 .. e^20) keep every
# evaluation finite.  An estimate on a bound means the data do not identify that
# parameter (e.g. no observed drop-out drives b -> infinity); it is returned as is.
_LOG_LO, _LOG_HI = -20.0, 20.0
# Slope of the quadratic wall that extends the objective beyond those bounds for the
# unconstrained optimiser, and the gradient (of the mean log-likelihood) accepted as
# converged.
_WALL = 1e3
_GTOL_ACCEPT = 1e-7
# |a - 1| (and, for x = 0, |a + b - 1|) below this are removable singularities of the
# hypergeometric form of the conditional expectation; the value there is interpolated
# from both sides (only on the z > 1/2 path; the series path has no singularity).
_EDGE = 1e-6
# z = t/(alpha+T+t) up to which the power series is summed directly (terms shrink
# roughly like z^n, so ~60 terms at 1/2), and its iteration cap.
_SERIES_Z = 0.5
_SERIES_MAX_TERMS = 2000
# cap when the series stands in for an untrusted hyp2f1 at z > 1/2 (z = 0.99 needs ~4e3)
_SERIES_MAX_TERMS_FAR = 20000
_EPS = 2.220446049250313e-16


# --------------------------------------------------------------------------- params


def _pos_float(d: Mapping[str, Any], key: str) -> float:
    v = d.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError(f"{key!r} must be a number, got {v!r}")
    f = float(v)
    if not (math.isfinite(f) and f > 0):
        raise ValueError(f"{key!r} must be finite and > 0, got {v!r}")
    return f


def _nonneg_int(d: Mapping[str, Any], key: str) -> int:
    v = d.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ValueError(f"{key!r} must be an integer >= 0, got {v!r}")
    return v


@dataclass(frozen=True, slots=True)
class BgNbdParams:
    """BG/NBD parameters; ``alpha`` is in the model's time unit. All must be > 0."""

    r: float
    alpha: float
    a: float
    b: float

    def __post_init__(self) -> None:
        for k in ("r", "alpha", "a", "b"):
            v = getattr(self, k)
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"BgNbdParams.{k} must be finite and > 0, got {v!r}")

    def to_dict(self) -> dict[str, float]:
        """JSON-ready dict; floats round-trip exactly through JSON (repr precision)."""
        return {"r": self.r, "alpha": self.alpha, "a": self.a, "b": self.b}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BgNbdParams:
        """Inverse of :meth:`to_dict`; raises ValueError on missing/invalid fields."""
        return cls(*(_pos_float(d, k) for k in ("r", "alpha", "a", "b")))


@dataclass(frozen=True, slots=True)
class GammaGammaParams:
    """Gamma-Gamma spend parameters; ``gamma`` is in minor units. All must be > 0."""

    p: float
    q: float
    gamma: float

    def __post_init__(self) -> None:
        for k in ("p", "q", "gamma"):
            v = getattr(self, k)
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"GammaGammaParams.{k} must be finite and > 0, got {v!r}")

    @property
    def population_mean(self) -> float:
        """Mean spend per purchase over the population, p*gamma/(q-1); inf if q <= 1."""
        return self.p * self.gamma / (self.q - 1.0) if self.q > 1.0 else math.inf

    def to_dict(self) -> dict[str, float]:
        """JSON-ready dict; floats round-trip exactly through JSON (repr precision)."""
        return {"p": self.p, "q": self.q, "gamma": self.gamma}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> GammaGammaParams:
        """Inverse of :meth:`to_dict`; raises ValueError on missing/invalid fields."""
        return cls(*(_pos_float(d, k) for k in ("p", "q", "gamma")))


@dataclass(frozen=True, slots=True)
class ShopModel:
    """A shop's fitted models, as published on the model topic / stored in a table.

    * ``bgnbd``: purchase model, time unit ``unit_days`` days.
    * ``gamma_gamma``: spend model (minor units) or None when it could not be fitted
      (fewer than :data:`MIN_GG_CUSTOMERS` repeat buyers with positive repeat spend, or
      an estimate with ``q <= 1``, whose population mean spend is infinite).
    * ``customers``: customers in the BG/NBD fit (T > 0); ``repeat_customers``: those
      with x > 0; ``gg_customers``: those in the Gamma-Gamma fit.
    * ``log_likelihood`` / ``gg_log_likelihood``: maximised total log-likelihoods (the
      BG/NBD value depends on the time unit, as it contains a density in time).
    * ``fitted_as_of``: the as-of date of the statistics, if the caller gave one.
    * ``bgnbd_fit`` / ``gg_fit``: :class:`FitDiagnostics` of the two fits (``gg_fit``
      None when Gamma-Gamma was not attempted); both None for a hand-built model,
      which is then not :attr:`sound`.  A degenerate Gamma-Gamma estimate is kept out
      of ``gamma_gamma`` when it has q <= 1, but its diagnostics stay here.
    * ``kind``: ``"shop"`` (fitted on one shop's customers) or ``"pooled"`` (fitted on
      a group of shops, see :func:`fit_models`).
    * ``gg_excluded``: repeat buyers left out of the Gamma-Gamma fit by the spend floor.
    """

    bgnbd: BgNbdParams
    gamma_gamma: GammaGammaParams | None
    customers: int
    repeat_customers: int
    gg_customers: int
    log_likelihood: float
    gg_log_likelihood: float | None
    unit_days: int
    fitted_as_of: date | None = None
    bgnbd_fit: FitDiagnostics | None = None
    gg_fit: FitDiagnostics | None = None
    kind: str = "shop"
    gg_excluded: int = 0

    def __post_init__(self) -> None:
        if self.unit_days not in (1, 7):
            raise ValueError(f"unit_days must be 1 or 7, got {self.unit_days!r}")
        if self.kind not in MODEL_KINDS:
            raise ValueError(f"kind must be one of {MODEL_KINDS}, got {self.kind!r}")
        if self.gamma_gamma is not None and self.gamma_gamma.q <= 1.0:
            # fit_shop never stores one; rejecting it here keeps score() total (its
            # posterior-mean denominator p*x + q - 1 could otherwise be <= 0)
            raise ValueError("a Gamma-Gamma model needs q > 1 (finite mean spend)")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (only str/int/float/None/dict values)."""
        return {
            "version": MODEL_VERSION,
            "unit_days": self.unit_days,
            "bgnbd": self.bgnbd.to_dict(),
            "gamma_gamma": None if self.gamma_gamma is None else self.gamma_gamma.to_dict(),
            "customers": self.customers,
            "repeat_customers": self.repeat_customers,
            "gg_customers": self.gg_customers,
            "log_likelihood": self.log_likelihood,
            "gg_log_likelihood": self.gg_log_likelihood,
            "fitted_as_of": None if self.fitted_as_of is None else self.fitted_as_of.isoformat(),
            "kind": self.kind,
            "gg_excluded": self.gg_excluded,
            "diagnostics": {
                "bgnbd": None if self.bgnbd_fit is None else self.bgnbd_fit.to_dict(),
                "gamma_gamma": None if self.gg_fit is None else self.gg_fit.to_dict(),
            },
        }

    @property
    def problem(self) -> str | None:
        """Why this model must not be served, or None when it is :attr:`sound`."""
        if self.bgnbd_fit is None:
            return "no fit diagnostics (not fitted by fit_shop)"
        if not self.bgnbd_fit.sound:
            return f"BG/NBD: {self.bgnbd_fit.reason}"
        if self.gg_fit is not None and not self.gg_fit.sound:
            return f"Gamma-Gamma: {self.gg_fit.reason}"
        return None

    @property
    def sound(self) -> bool:
        """True when both fits converged and neither is degenerate: the model may be served."""
        return self.problem is None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ShopModel:
        """Inverse of :meth:`to_dict`.

        Raises ValueError on an unknown ``version`` or any missing/invalid field, so a
        corrupt or future-format record is rejected rather than half-read.
        """
        if not isinstance(d, Mapping):
            raise ValueError(f"ShopModel record must be an object, got {type(d).__name__}")
        if d.get("version") != MODEL_VERSION:
            # version 1 carried no diagnostics: never served, the next refit replaces it
            raise ValueError(f"unsupported ShopModel version {d.get('version')!r}")
        bg = d.get("bgnbd")
        if not isinstance(bg, Mapping):
            raise ValueError("'bgnbd' must be an object")
        gg_raw = d.get("gamma_gamma")
        if gg_raw is not None and not isinstance(gg_raw, Mapping):
            raise ValueError("'gamma_gamma' must be an object or null")
        ll = d.get("log_likelihood")
        if isinstance(ll, bool) or not isinstance(ll, (int, float)) or not math.isfinite(ll):
            raise ValueError(f"'log_likelihood' must be a finite number, got {ll!r}")
        gll = d.get("gg_log_likelihood")
        if gll is not None and (
            isinstance(gll, bool) or not isinstance(gll, (int, float)) or not math.isfinite(gll)
        ):
            raise ValueError(f"'gg_log_likelihood' must be a finite number or null, got {gll!r}")
        unit = d.get("unit_days")
        if isinstance(unit, bool) or unit not in (1, 7):
            raise ValueError(f"'unit_days' must be 1 or 7, got {unit!r}")
        as_of = d.get("fitted_as_of")
        if as_of is not None:
            if not isinstance(as_of, str):
                raise ValueError(f"'fitted_as_of' must be an ISO date or null, got {as_of!r}")
            try:
                as_of = date.fromisoformat(as_of)
            except ValueError as e:
                raise ValueError(f"'fitted_as_of' is not an ISO date: {as_of!r}") from e
        diag = d.get("diagnostics")
        if not isinstance(diag, Mapping):
            raise ValueError("'diagnostics' must be an object")
        gg_diag = diag.get("gamma_gamma")
        return cls(
            bgnbd=BgNbdParams.from_dict(bg),
            gamma_gamma=None if gg_raw is None else GammaGammaParams.from_dict(gg_raw),
            customers=_nonneg_int(d, "customers"),
            repeat_customers=_nonneg_int(d, "repeat_customers"),
            gg_customers=_nonneg_int(d, "gg_customers"),
            log_likelihood=float(ll),
            gg_log_likelihood=None if gll is None else float(gll),
            unit_days=int(unit),
            fitted_as_of=as_of,
            bgnbd_fit=FitDiagnostics.from_dict(diag.get("bgnbd")),
            gg_fit=None if gg_diag is None else FitDiagnostics.from_dict(gg_diag),
            kind=d.get("kind"),  # type: ignore[arg-type]  # validated in __post_init__
            gg_excluded=_nonneg_int(d, "gg_excluded"),
        )


# ------------------------------------------------------------------- likelihoods


def _as_float_arrays(*arrays: Any) -> list[np.ndarray]:
    out = np.broadcast_arrays(*(np.asarray(a, dtype=np.float64) for a in arrays))
    return [np.array(a, dtype=np.float64) for a in out]  # own, writable copies


def _check_bg_stats(x: np.ndarray, t_x: np.ndarray, T: np.ndarray) -> None:
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(t_x)) and np.all(np.isfinite(T))):
        raise ValueError("x, t_x and T must be finite")
    if np.any(x < 0) or np.any(t_x < 0) or np.any(t_x > T):
        raise ValueError("need x >= 0 and 0 <= t_x <= T for every customer")


@dataclass(frozen=True, slots=True)
class _BgData:
    """Fit data grouped for speed: identical (x, t_x, T) rows merged with a count, and
    the x-only gamma-function terms evaluated once per distinct x."""

    x: np.ndarray
    t_x: np.ndarray
    T: np.ndarray
    w: np.ndarray  # multiplicity of each row
    rep: np.ndarray  # x > 0
    xu: np.ndarray  # distinct x values
    w_xu: np.ndarray  # total multiplicity per distinct x
    n: float  # total customers


def _dot(u: np.ndarray, v: np.ndarray) -> float:
    """Weighted sum without BLAS: ``u @ v`` goes to a multi-threaded BLAS ddot, which on a
    busy 2-core machine made each likelihood evaluation ~20x slower (thread contention);
    numpy's own pairwise sum is single-threaded and as accurate."""
    return float(np.sum(u * v))


def _bg_data(x: np.ndarray, t_x: np.ndarray, T: np.ndarray, weights: np.ndarray | None) -> _BgData:
    if weights is None:
        # merge identical rows (integer-day data repeats a lot); lexsort + run starts is
        # ~10x faster than np.unique(axis=0)
        order = np.lexsort((T, t_x, x))
        xs, txs, Ts = x[order], t_x[order], T[order]
        start = np.ones(len(xs), dtype=bool)
        start[1:] = (np.diff(xs) != 0) | (np.diff(txs) != 0) | (np.diff(Ts) != 0)
        idx = np.flatnonzero(start)
        ux, tx, tt = xs[idx], txs[idx], Ts[idx]
        w = np.diff(np.append(idx, len(xs))).astype(np.float64)
    else:
        ux, tx, tt, w = x, t_x, T, np.asarray(weights, dtype=np.float64)
    xu, xinv = np.unique(ux, return_inverse=True)
    w_xu = np.bincount(xinv.ravel(), weights=w, minlength=len(xu))
    return _BgData(ux, tx, tt, w, ux > 0, xu, w_xu, float(w.sum()))


def _bg_terms(
    r: float, alpha: float, a: float, b: float, d: _BgData, want_grad: bool
) -> tuple[float, np.ndarray | None]:
    """Total log-likelihood (and its gradient w.r.t. (r, alpha, a, b)).

    LL_i = ln G(r+x) - ln G(r) + r ln alpha + ln B(a, b+x) - ln B(a, b)
           + ln[ (alpha+T)^-(r+x) + [x>0] a/(b+x-1) (alpha+t_x)^-(r+x) ]
    The last bracket is combined with logaddexp (never exponentiated on its own).
    """
    xu, x, rep = d.xu, d.x, d.rep
    # x-only terms, once per distinct x, weighted by how many customers have that x
    g1 = special.gammaln(r + xu) - special.gammaln(r)
    g2 = special.betaln(a, b + xu) - special.betaln(a, b)
    ll = _dot(d.w_xu, g1 + g2) + d.n * r * math.log(alpha)

    rx = r + x
    lat = np.log(alpha + d.T)
    a3 = -rx * lat
    a4 = np.full_like(a3, -np.inf)
    xr = x[rep]
    ltx_r = np.log(alpha + d.t_x[rep])
    a4[rep] = math.log(a) - np.log(b + xr - 1.0) - rx[rep] * ltx_r
    lse = np.logaddexp(a3, a4)
    ll += _dot(d.w, lse)
    if not want_grad:
        return ll, None

    wt = np.exp(a4 - lse)  # posterior weight of the "dropped out at t_x" branch
    one_m = 1.0 - wt
    dig_ab = special.digamma(a + b)
    dig_abx = special.digamma(a + b + xu)
    dr_x = special.digamma(r + xu) - special.digamma(r)
    da_x = dig_ab - dig_abx
    db_x = special.digamma(b + xu) - special.digamma(b) - dig_abx + dig_ab

    dr = _dot(d.w_xu, dr_x) + d.n * math.log(alpha)
    dr -= _dot(d.w, one_m * lat)
    dr -= _dot(d.w[rep], wt[rep] * ltx_r)
    dalpha = d.n * r / alpha
    dalpha -= _dot(d.w, one_m * rx / (alpha + d.T))
    dalpha -= _dot(d.w[rep], wt[rep] * rx[rep] / (alpha + d.t_x[rep]))
    da = _dot(d.w_xu, da_x) + _dot(d.w[rep], wt[rep]) / a
    db = _dot(d.w_xu, db_x) - _dot(d.w[rep], wt[rep] / (b + xr - 1.0))
    return ll, np.array([dr, dalpha, da, db])


def bgnbd_log_likelihood(params: BgNbdParams, x: Any, t_x: Any, T: Any) -> np.ndarray:
    """Per-customer BG/NBD log-likelihood (array, same broadcast shape as the inputs).

    Times in the model's unit.  Raises ValueError unless x >= 0 and 0 <= t_x <= T.
    ``T == 0`` gives log-likelihood 0 (no observation time, no information).
    """
    x, t_x, T = _as_float_arrays(x, t_x, T)
    _check_bg_stats(x, t_x, T)
    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    rx = r + x
    a3 = -rx * np.log(alpha + T)
    a4 = np.full_like(a3, -np.inf)
    rep = x > 0
    a4[rep] = math.log(a) - np.log(b + x[rep] - 1.0) - rx[rep] * np.log(alpha + t_x[rep])
    return (
        special.gammaln(rx)
        - special.gammaln(r)
        + r * math.log(alpha)
        + special.betaln(a, b + x)
        - special.betaln(a, b)
        + np.logaddexp(a3, a4)
    )


@dataclass(frozen=True, slots=True)
class _GgData:
    """Gamma-Gamma fit data with the parameter-free sums precomputed and the x-only
    gamma-function terms evaluated once per distinct x (x takes few values)."""

    x: np.ndarray
    m: np.ndarray
    xu: np.ndarray  # distinct x
    cnt: np.ndarray  # customers per distinct x
    n: float
    sum_lm: float  # sum ln m
    sum_x_lmx: float  # sum x (ln m + ln x)


def _gg_data(x: np.ndarray, m: np.ndarray) -> _GgData:
    xu, cnt = np.unique(x, return_counts=True)
    lm = np.log(m)
    return _GgData(
        x, m, xu, cnt.astype(np.float64), float(x.size), float(np.sum(lm)),
        float(np.sum(x * (lm + np.log(x)))),
    )


def _gg_terms(
    p: float, q: float, g: float, d: _GgData, want_grad: bool
) -> tuple[float, np.ndarray | None]:
    """Total Gamma-Gamma log-likelihood of the mean spends (and gradient w.r.t. p, q, gamma).

    LL_i = ln G(px+q) - ln G(px) - ln G(q) + q ln g + (px-1) ln m + px ln x
           - (px+q) ln(g + m x)
    """
    pxu = p * d.xu
    lgm = np.log(g + d.m * d.x)
    px = p * d.x
    ll = (
        _dot(d.cnt, special.gammaln(pxu + q) - special.gammaln(pxu))
        + p * d.sum_x_lmx - d.sum_lm - float(np.sum((px + q) * lgm))
        + d.n * (q * math.log(g) - math.lgamma(q))
    )
    if not want_grad:
        return ll, None
    dig = special.digamma(pxu + q)
    dp = _dot(d.cnt, d.xu * (dig - special.digamma(pxu))) + d.sum_x_lmx - _dot(d.x, lgm)
    dq = _dot(d.cnt, dig) - float(np.sum(lgm)) + d.n * (math.log(g) - float(special.digamma(q)))
    dg = d.n * q / g - float(np.sum((px + q) / (g + d.m * d.x)))
    return ll, np.array([dp, dq, dg])


def gamma_gamma_log_likelihood(params: GammaGammaParams, x: Any, m: Any) -> np.ndarray:
    """Per-customer Gamma-Gamma log-likelihood of mean repeat spend ``m`` over ``x`` purchases.

    Defined only for x > 0 and m > 0 (the density of a mean of Gamma variables);
    raises ValueError otherwise.
    """
    x, m = _as_float_arrays(x, m)
    if np.any(~np.isfinite(x)) or np.any(~np.isfinite(m)) or np.any(x <= 0) or np.any(m <= 0):
        raise ValueError("Gamma-Gamma needs finite x > 0 and m > 0")
    p, q, g = params.p, params.q, params.gamma
    px = p * x
    return (
        special.gammaln(px + q) - special.gammaln(px) - special.gammaln(q) + q * math.log(g)
        + (px - 1.0) * np.log(m) + px * np.log(x) - (px + q) * np.log(g + m * x)
    )


# ---------------------------------------------------------------------------- fit


def _minimise(fun: Any, theta0: np.ndarray) -> optimize.OptimizeResult:
    """Minimise a smooth mean-negative-log-likelihood ``fun -> (value, gradient)`` over
    log-parameters; returns a result whose ``x`` lies in the box [_LOG_LO, _LOG_HI].

    Primary: BFGS with the analytic gradient on an unconstrained extension of the
    objective (outside the box: the value at the clipped point plus a steep quadratic
    wall), accepted when the final gradient is below _GTOL_ACCEPT.  The objective is
    a *mean* (O(1)), so that threshold is far below the statistical error yet above
    rounding noise.  BFGS rather than L-BFGS-B because L-BFGS-B's many tiny BLAS/LAPACK
    calls wake a multi-threaded BLAS each iteration, which on a busy 2-core machine
    made it 3-5x slower than BFGS for the same iterations.
    Fallback (BFGS not converged): L-BFGS-B from the best point so far, then a
    Nelder-Mead polish and L-BFGS-B again if that still stops abnormally; the best
    point wins.  Raises ValueError if no finite optimum is found.
    """
    lo, hi = _LOG_LO, _LOG_HI

    def walled(theta: np.ndarray) -> tuple[float, np.ndarray]:
        th = np.clip(theta, lo, hi)
        out = theta - th
        f, g = fun(th)
        return f + _WALL * float(np.sum(out * out)), g + 2.0 * _WALL * out

    def gnorm(res: optimize.OptimizeResult) -> float:
        f, g = walled(res.x)
        return float(np.max(np.abs(g))) if np.isfinite(f) else math.inf

    best = optimize.minimize(
        walled, theta0, jac=True, method="BFGS", options={"gtol": 1e-11, "maxiter": 2000}
    )
    if not (np.isfinite(best.fun) and gnorm(best) <= _GTOL_ACCEPT):
        start = best.x if np.all(np.isfinite(best.x)) and np.isfinite(best.fun) else theta0
        bounds = [(lo, hi)] * len(theta0)
        opts = {"maxiter": 5000, "ftol": 1e-14, "gtol": 1e-9}
        cands = [best, optimize.minimize(
            fun, np.clip(start, lo, hi), jac=True, method="L-BFGS-B", bounds=bounds, options=opts
        )]
        if not cands[-1].success:
            nm = optimize.minimize(
                lambda th: fun(th)[0], cands[-1].x, method="Nelder-Mead", bounds=bounds,
                options={"xatol": 1e-10, "fatol": 1e-15, "maxiter": 20000, "maxfev": 20000},
            )
            cands += [nm, optimize.minimize(
                fun, nm.x, jac=True, method="L-BFGS-B", bounds=bounds, options=opts
            )]
        finite = [c for c in cands if np.isfinite(c.fun) and np.all(np.isfinite(c.x))]
        if finite:
            best = min(finite, key=lambda c: float(c.fun))
    if not (np.isfinite(best.fun) and np.all(np.isfinite(best.x))):
        raise ValueError(f"likelihood maximisation failed: {best.message}")
    best.x = np.clip(best.x, lo, hi)
    return best


def fit_bgnbd(
    x: Any, t_x: Any, T: Any, *, weights: Any = None
) -> tuple[BgNbdParams, float]:
    """Maximum-likelihood BG/NBD fit. Returns (params, total log-likelihood).

    ``x``, ``t_x``, ``T`` are per-customer arrays in the model's time unit (``weights``
    optionally gives a multiplicity per row).  Rows with ``T == 0`` contribute nothing
    to the likelihood and may be included.  Optimises the mean log-likelihood over
    log-parameters with the analytic gradient (see :func:`_minimise`); the result is a
    local optimum, in practice the global one (the BG/NBD likelihood is well behaved for
    real data; tests compare against an independent optimiser).

    Raises ValueError on empty input, invalid statistics, no repeat buyer (the
    drop-out process is then unidentified), or optimiser failure.
    """
    x, t_x, T = _as_float_arrays(x, t_x, T)
    x, t_x, T = x.ravel(), t_x.ravel(), T.ravel()
    if x.size == 0:
        raise ValueError("BG/NBD fit needs at least one customer")
    _check_bg_stats(x, t_x, T)
    if weights is not None:
        weights = np.asarray(weights, dtype=np.float64).ravel()
        if weights.shape != x.shape or np.any(weights < 0) or not np.all(np.isfinite(weights)):
            raise ValueError("weights must be finite, >= 0 and one per customer")
    has_rep = (x > 0) if weights is None else ((x > 0) & (weights > 0))
    if not np.any(has_rep):
        raise ValueError("BG/NBD fit needs at least one repeat buyer (x > 0)")
    d = _bg_data(x, t_x, T, weights)
    if not np.any(d.T > 0):
        raise ValueError("BG/NBD fit needs at least one customer with T > 0")

    def fun(theta: np.ndarray) -> tuple[float, np.ndarray]:
        par = np.exp(theta)
        ll, g = _bg_terms(*par, d, True)
        # chain rule for log-parameters; divide by n so the objective is O(1)
        return -ll / d.n, -(g * par) / d.n

    # Start: r = 1 and alpha matching the pooled repeat rate (rate ~ r / alpha);
    # a = b = 1 is a flat Beta prior on the drop-out probability.
    rate = _dot(d.w, d.x) / max(_dot(d.w, d.T), 1e-12)
    alpha0 = float(np.clip(1.0 / max(rate, 1e-12), math.exp(_LOG_LO + 1), math.exp(_LOG_HI - 1)))
    res = _minimise(fun, np.log([1.0, alpha0, 1.0, 1.0]))
    r, alpha, a, b = (float(v) for v in np.exp(res.x))
    ll, _ = _bg_terms(r, alpha, a, b, d, False)
    return BgNbdParams(r, alpha, a, b), ll


def fit_gamma_gamma(x: Any, m: Any) -> tuple[GammaGammaParams, float]:
    """Maximum-likelihood Gamma-Gamma fit on customers with x > 0 repeat purchases of mean
    value m > 0 (minor units). Returns (params, total log-likelihood in the units of m).

    Internally m is divided by its mean so the optimiser works at O(1) scale; gamma is
    scaled back (the model is scale-equivariant: p and q are unit-free).
    Raises ValueError on empty input, x <= 0, m <= 0 or optimiser failure.
    """
    x, m = _as_float_arrays(x, m)
    x, m = x.ravel(), m.ravel()
    if x.size == 0:
        raise ValueError("Gamma-Gamma fit needs at least one customer with x > 0")
    if np.any(~np.isfinite(x)) or np.any(~np.isfinite(m)) or np.any(x <= 0) or np.any(m <= 0):
        raise ValueError("Gamma-Gamma fit needs finite x > 0 and m > 0")
    scale = float(np.mean(m))
    d = _gg_data(x, m / scale)
    n = d.n

    def fun(theta: np.ndarray) -> tuple[float, np.ndarray]:
        par = np.exp(theta)
        ll, g = _gg_terms(*par, d, True)
        return -ll / n, -(g * par) / n

    # Start: p = 2, q = 3 and gamma so that the population mean p*gamma/(q-1) equals
    # the observed mean (1 after scaling).
    res = _minimise(fun, np.log([2.0, 3.0, 1.0]))
    p, q, g = (float(v) for v in np.exp(res.x))
    ll, _ = _gg_terms(p, q, g, d, False)
    # density of m = scale * ms: each customer's density picks up a 1/scale Jacobian
    return GammaGammaParams(p, q, g * scale), ll - n * math.log(scale)


# -------------------------------------------------------------------- diagnostics

#: A fit whose mean log-likelihood gradient (w.r.t. log-parameters, i.e. relative
#: changes) exceeds this at the returned point has not converged.
CONVERGED_GTOL = 1e-5
#: A log-parameter within this distance of the optimiser's box (e^-20 .. e^20) "ran to
#: its bound": the data push it to 0 or infinity and do not identify it.
BOUND_MARGIN = 1.0
#: Largest accepted relative standard error (SE / estimate).  Beyond it the likelihood is
#: flat along that parameter: the data cannot tell the estimate from zero or from many
#: times its value.  Measured on CDNOW: the 1/10 sample stays below 0.31, random
#: 150-customer cuts mostly below 2.7, while runaway fits (a ~ 8e5, b ~ 5e6) reach 6-13.
MAX_REL_SE = 3.0
#: Relative step of the central differences of the analytic gradient (Hessian).
_HESS_STEP = 1e-5


@dataclass(frozen=True, slots=True)
class FitDiagnostics:
    """How far one maximum-likelihood fit can be trusted.

    * ``converged``: the gradient at the estimate is below :data:`CONVERGED_GTOL`.
    * ``log_likelihood``: the maximised total log-likelihood.
    * ``std_errors``: per parameter (published parametrisation: r, alpha, a, b or p, q,
      gamma), the square root of the diagonal of the inverse Hessian of the negative
      log-likelihood at the estimate (central differences of the analytic gradient);
      None where the Hessian cannot be inverted.
    * ``degenerate`` and ``reason``: the first failed check, in this order: not
      converged, a parameter at its bound, Hessian not finite / not positive definite,
      a flat likelihood (relative SE above :data:`MAX_REL_SE`), or a model-specific
      condition (Gamma-Gamma q <= 1).  ``reason`` is None for a sound fit.
    """

    converged: bool
    log_likelihood: float
    std_errors: Mapping[str, float | None]
    degenerate: bool
    reason: str | None

    @property
    def sound(self) -> bool:
        """True when the fit may be served (converged and not degenerate)."""
        return self.converged and not self.degenerate

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (SEs as floats or null)."""
        return {"converged": self.converged, "log_likelihood": self.log_likelihood,
                "std_errors": dict(self.std_errors), "degenerate": self.degenerate,
                "reason": self.reason}

    @classmethod
    def from_dict(cls, d: Any) -> FitDiagnostics:
        """Inverse of :meth:`to_dict`; raises ValueError on missing/invalid fields."""
        if not isinstance(d, Mapping):
            raise ValueError("diagnostics must be an object")
        conv, degen, reason = d.get("converged"), d.get("degenerate"), d.get("reason")
        ll = d.get("log_likelihood")
        ses = d.get("std_errors")
        if not isinstance(conv, bool) or not isinstance(degen, bool):
            raise ValueError("diagnostics need boolean 'converged' and 'degenerate'")
        if reason is not None and not isinstance(reason, str):
            raise ValueError("diagnostics 'reason' must be a string or null")
        if isinstance(ll, bool) or not isinstance(ll, (int, float)) or not math.isfinite(ll):
            raise ValueError(f"diagnostics 'log_likelihood' must be a finite number, got {ll!r}")
        if not isinstance(ses, Mapping) or not all(
            v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in ses.values()
        ):
            raise ValueError("diagnostics 'std_errors' must map names to numbers or null")
        if (conv and not degen) != (reason is None):
            raise ValueError("diagnostics 'reason' must be given exactly when the fit is not sound")
        return cls(conv, float(ll), {str(k): None if v is None else float(v) for k, v in ses.items()},
                   degen, reason)


def _diagnose(names: Sequence[str], theta: np.ndarray, ll: float, n: float,
              grad_nll: Any) -> FitDiagnostics:
    """Shared checks. ``grad_nll(theta)``: gradient of the *total* negative log-likelihood
    w.r.t. the natural parameters; ``n`` scales it to the mean for the convergence test."""
    g = np.asarray(grad_nll(theta), dtype=np.float64)
    rel_grad = float(np.max(np.abs(g * theta))) / n if np.all(np.isfinite(g)) else math.inf
    converged = rel_grad <= CONVERGED_GTOL
    k = len(theta)
    hess = np.empty((k, k))
    for i in range(k):
        h = _HESS_STEP * theta[i]
        up, dn = theta.copy(), theta.copy()
        up[i] += h
        dn[i] -= h
        hess[:, i] = (np.asarray(grad_nll(up)) - np.asarray(grad_nll(dn))) / (2.0 * h)
    hess = 0.5 * (hess + hess.T)
    ses: dict[str, float | None] = dict.fromkeys(names)
    reason: str | None = None
    log_theta = np.log(theta)
    at_bound = [nm for nm, lt in zip(names, log_theta, strict=True)
                if lt <= _LOG_LO + BOUND_MARGIN or lt >= _LOG_HI - BOUND_MARGIN]
    pd = False
    if np.all(np.isfinite(hess)):
        # curvature in relative terms (the Hessian w.r.t. log-parameters at a stationary
        # point): scale-free, so one eigenvalue test fits parameters of any magnitude
        scaled = hess * np.outer(theta, theta)
        eig = np.linalg.eigvalsh(scaled)
        pd = bool(eig[0] > 1e-12 * max(abs(eig[-1]), 1.0))
        if pd:
            cov = np.linalg.inv(hess)
            diag = np.diag(cov)
            ses = {nm: (float(math.sqrt(v)) if v > 0 and math.isfinite(v) else None)
                   for nm, v in zip(names, diag, strict=True)}
    if at_bound:
        reason = "parameter(s) " + ", ".join(at_bound) + " ran to the optimiser's bound"
    elif not pd:
        reason = "Hessian is not positive definite: the likelihood does not identify the parameters"
    else:
        flat = [f"{nm} {'n/a' if se is None else format(se / t, '.3g')}"
                for nm, se, t in zip(names, ses.values(), theta, strict=True)
                if se is None or se / t > MAX_REL_SE]
        if flat:
            reason = "flat likelihood: relative standard error " + ", ".join(flat)
    degenerate = reason is not None
    if not converged:
        reason = f"did not converge (relative gradient {rel_grad:.2g})" + (
            f"; {reason}" if reason else "")
    return FitDiagnostics(converged, float(ll), ses, degenerate, reason)


def bgnbd_diagnostics(params: BgNbdParams, x: Any, t_x: Any, T: Any) -> FitDiagnostics:
    """Diagnostics of a BG/NBD estimate on its data (times in the model unit)."""
    x, t_x, T = (a.ravel() for a in _as_float_arrays(x, t_x, T))
    _check_bg_stats(x, t_x, T)
    d = _bg_data(x, t_x, T, None)

    def grad(th: np.ndarray) -> np.ndarray:
        return -_bg_terms(*(float(v) for v in th), d, True)[1]  # type: ignore[operator]

    theta = np.array([params.r, params.alpha, params.a, params.b])
    ll, _ = _bg_terms(*theta, d, False)
    return _diagnose(("r", "alpha", "a", "b"), theta, ll, d.n, grad)


def gamma_gamma_diagnostics(params: GammaGammaParams, x: Any, m: Any) -> FitDiagnostics:
    """Diagnostics of a Gamma-Gamma estimate on its data (m in minor units).

    Computed on m scaled to mean 1 (as the fit is); the gamma SE is scaled back.  An
    estimate with q <= 1 (infinite mean spend) is degenerate whatever its curvature.
    """
    x, m = (a.ravel() for a in _as_float_arrays(x, m))
    scale = float(np.mean(m))
    d = _gg_data(x, m / scale)

    def grad(th: np.ndarray) -> np.ndarray:
        return -_gg_terms(*(float(v) for v in th), d, True)[1]  # type: ignore[operator]

    theta = np.array([params.p, params.q, params.gamma / scale])
    ll, _ = _gg_terms(*theta, d, False)
    diag = _diagnose(("p", "q", "gamma"), theta, ll - d.n * math.log(scale), d.n, grad)
    ses = dict(diag.std_errors)
    if ses["gamma"] is not None:
        ses["gamma"] *= scale
    degenerate, reason = diag.degenerate, diag.reason
    if not degenerate and params.q <= 1.0:
        degenerate = True
        reason = "; ".join(r for r in (reason, "q <= 1: the population mean spend is infinite") if r)
    return FitDiagnostics(diag.converged, diag.log_likelihood, ses, degenerate, reason)


# -------------------------------------------------------------------- closed forms


def _scalar_or_array(v: np.ndarray) -> float | np.ndarray:
    return float(v) if v.ndim == 0 else v


def p_alive(params: BgNbdParams, x: Any, t_x: Any, T: Any) -> float | np.ndarray:
    """P(customer still alive at T | x, t_x, T) under BG/NBD.

    = 1 / (1 + [x>0] * a/(b+x-1) * ((alpha+T)/(alpha+t_x))^(r+x)), computed through the
    log of the odds (no overflow for large x or T).  Guarantees a value in [0, 1]
    (mathematically > 0; it underflows to 0.0 only for extreme histories); it is
    exactly 1 for x == 0 (drop-out only happens right after a repeat purchase), and for
    x > 0 it is at most 1/(1 + a/(b+x-1)) (reached at t_x == T: even a purchase made
    just now may have been the last), increasing in t_x and decreasing in T.
    Times in the model unit; scalars in, float out; arrays broadcast.
    Raises ValueError unless x >= 0 and 0 <= t_x <= T.
    """
    x, t_x, T = _as_float_arrays(x, t_x, T)
    _check_bg_stats(x, t_x, T)
    log_odds_dead = np.full(x.shape, -np.inf)
    rep = x > 0
    xr = x[rep]
    log_odds_dead[rep] = (
        math.log(params.a) - np.log(params.b + xr - 1.0)
        + (params.r + xr) * np.log1p((T[rep] - t_x[rep]) / (params.alpha + t_x[rep]))
    )
    return _scalar_or_array(special.expit(-log_odds_dead))


def _future_core(r: float, alpha: float, a: float, b: float, t: float, x: float, T: float) -> float:
    """E[purchases in (T, T+t] | alive at T, x, T] (scalar), numerically careful form.

    Paper, eq. (10) without the P(alive) factor:
        (a+b+x-1)/(a-1) * [1 - ((alpha+T)/(alpha+T+t))^(r+x) 2F1(r+x, b+x; a+b+x-1; z)]
    with z = t/(alpha+T+t).  Euler's transformation 2F1(A,B;C;z) = (1-z)^(C-A-B)
    2F1(C-A, C-B; C; z) turns the bracket into
        1 - (1-z)^A F,   F = 2F1(A, B; C; z),  A = a-1, B = a+b-1-r, C = a+b+x-1,
    whose first parameter no longer grows with x (the original series has huge, nearly
    cancelling terms for large x).  Writing F = 1 + A*S and (1-z)^A = e^u, u = A ln(1-z):
        core = -C ln(1-z) (e^u - 1)/u  -  e^u * C*S,
    where C*S = sum_n C s_n, C s_1 = B z, C s_{n+1} = C s_n (A+n)(B+n) z / ((C+n)(n+1)).
    Summing C*S directly has no removable singularity left: neither a == 1 (A == 0)
    nor, for x == 0, a+b == 1 (C == 0) needs special treatment, and no 1 - F
    cancellation occurs.  The series is used for z <= 1/2 (fast convergence); beyond,
    or if the series is unusable (see :func:`_cs_series`), scipy's hyp2f1 is used (see
    :func:`_future_core_hyp`).  Should that come out non-finite too -- only for
    degenerate parameters such as r ~ 1e6, which tiny or pathological shops can produce
    -- the expectation is integrated numerically (:func:`_future_core_quad`).
    """
    if t <= 0.0:
        return 0.0
    A, B, C = a - 1.0, a + b - 1.0 - r, a + b + x - 1.0
    z = t / (alpha + T + t)
    # ln(1-z) = -ln(1 + t/(alpha+T)); log1p keeps full relative precision for small t,
    # where the difference of two logs would cancel
    log1mz = -math.log1p(t / (alpha + T))
    u = A * log1mz
    phi = math.expm1(u) / u if u != 0.0 else 1.0
    if z <= _SERIES_Z:
        cs = _cs_series(A, B, C, z, _SERIES_MAX_TERMS)
        if cs is not None:
            return -C * log1mz * phi - math.exp(u) * cs
        v = _future_core_hyp(A, B, C, z, log1mz, b)
    else:
        v = _future_core_hyp(A, B, C, z, log1mz, b)
        if not math.isfinite(v):
            # hyp2f1 untrusted here (e.g. a ~ 1 with large C): the series still
            # converges for z < 1, only more slowly (~1e3 terms at z = 0.97)
            cs = _cs_series(A, B, C, z, _SERIES_MAX_TERMS_FAR)
            if cs is not None:
                return -C * log1mz * phi - math.exp(u) * cs
    if math.isfinite(v):
        return v
    return _future_core_quad(r, alpha, a, b, t, x, T)


def _cs_series(A: float, B: float, C: float, z: float, max_terms: int) -> float | None:
    """C * (2F1(A,B;C;z) - 1) / A by its power series; None if unusable.

    Stops once a term is negligible *and* the terms are shrinking for good: the term
    ratio (A+n)(B+n)z/((C+n)(n+1)) is below 1 and n > A+B-C-1 (beyond which, with
    z <= 1/2, it stays below 1; for z > 1/2 it approaches z < 1 from either side).
    Returns None if that takes more than ``max_terms`` terms, or if the partial sums cancelled so much (largest term
    > 1e8 x the sum, i.e. r so large that B ~ -r and the terms alternate with huge
    magnitude) that fewer than ~8 digits would be left.
    """
    term = B * z
    total = term
    biggest = abs(term)
    n = 1
    settle = A + B - C - 1.0
    while n < max_terms:
        ratio = (A + n) * (B + n) * z / ((C + n) * (n + 1))
        term *= ratio
        total += term
        biggest = max(biggest, abs(term))
        n += 1
        if abs(term) <= 1e-17 * abs(total) and abs(ratio) < 1.0 and n > settle:
            if biggest > 1e8 * abs(total) or not math.isfinite(total):
                return None
            return total
    return None


def _future_core_quad(
    r: float, alpha: float, a: float, b: float, t: float, x: float, T: float
) -> float:
    """Last-resort evaluation of the conditional expectation by 1-D quadrature.

    Given alive, lambda ~ Gamma(r+x, alpha+T) and p ~ Beta(a, b+x); integrating lambda
    out analytically leaves E_p[(1 - (1 + p t/(alpha+T))^-(r+x)) / p], integrated with
    QUADPACK's algebraic end-point weight p^(a-1) (1-p)^(b+x-1).  Slow (~1 ms) but
    valid for any parameters; NaN if even this fails (score() then reports null).
    """
    k = t / (alpha + T)
    rx = r + x

    def g(p: float) -> float:
        return rx * k if p == 0.0 else -math.expm1(-rx * math.log1p(p * k)) / p

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # accuracy warnings: the result is best effort
        try:
            v, _ = integrate.quad(
                g, 0.0, 1.0, weight="alg", wvar=(a - 1.0, b + x - 1.0), limit=200
            )
        except (ValueError, ZeroDivisionError, OverflowError):
            return math.nan
    if not (math.isfinite(v) and v >= 0.0):
        return math.nan
    if v == 0.0:
        return 0.0
    # divide by B(a, b+x) in log space: the Beta function itself under/overflows here
    e = math.log(v) - float(special.betaln(a, b + x))
    return math.exp(e) if e < 709.0 else math.inf


def _future_core_hyp(A: float, B: float, C: float, z: float, log1mz: float, b: float) -> float:
    """The bracket of :func:`_future_core` via scipy's hyp2f1 (used for z > 1/2).

    core = C/A * (-(e^u - 1) - e^u (F - 1)).  The rounding error of F - 1 (a few eps
    times |F|) is amplified by |C/A|; the result is returned only if that error
    estimate, with a 10x allowance for hyp2f1's own error, is below 1e-9 of the value
    and the value is >= 0 -- otherwise NaN, so that the caller falls back to the series
    or quadrature (this is what happens for a ~ 1 with large C, or degenerate
    parameters).  The removable singularities A == 0 and (x == 0) C == 0 are
    interpolated linearly from nodes at +-2*_EDGE, an error of O(_EDGE^2).
    """
    if abs(A) < _EDGE:
        # shifting a moves A, B and C together; nodes at 2*_EDGE are safely outside
        lo_d, hi_d = -2.0 * _EDGE - A, 2.0 * _EDGE - A
        lo = _future_core_hyp(A + lo_d, B + lo_d, C + lo_d, z, log1mz, b + 0.0)
        hi = _future_core_hyp(A + hi_d, B + hi_d, C + hi_d, z, log1mz, b + 0.0)
        return lo + (hi - lo) * (-lo_d) / (hi_d - lo_d)
    if abs(C) < _EDGE:  # only possible for x == 0; shift b (moves B and C together)
        lo_d, hi_d = -2.0 * _EDGE - C, 2.0 * _EDGE - C
        if b + lo_d <= 0.0:  # b itself ~ 0: extrapolate from two nodes on the right
            lo_d, hi_d = hi_d, hi_d + 2.0 * _EDGE
        lo = _future_core_hyp(A, B + lo_d, C + lo_d, z, log1mz, b + lo_d)
        hi = _future_core_hyp(A, B + hi_d, C + hi_d, z, log1mz, b + hi_d)
        return lo + (hi - lo) * (-lo_d) / (hi_d - lo_d)
    f = float(special.hyp2f1(A, B, C, z))
    u = A * log1mz
    eu = math.exp(u)
    v = C / A * (-math.expm1(u) - eu * (f - 1.0))
    err = abs(C / A) * eu * max(abs(f), 1.0) * 10.0 * _EPS
    if not (math.isfinite(v) and v >= 0.0 and err <= 1e-9 * v):
        return math.nan
    return v


def _p_alive_scalar(r: float, alpha: float, a: float, b: float, x: float, t_x: float, T: float) -> float:
    if x <= 0:
        return 1.0
    # ln((alpha+T)/(alpha+t_x)) via log1p: exact-ish when t_x is close to T
    lo = math.log(a) - math.log(b + x - 1.0) + (r + x) * math.log1p((T - t_x) / (alpha + t_x))
    if lo > 0.0:
        e = math.exp(-lo)
        return e / (1.0 + e)
    return 1.0 / (1.0 + math.exp(lo))


def expected_purchases(params: BgNbdParams, t: Any, x: Any, t_x: Any, T: Any) -> float | np.ndarray:
    """E[number of repeat purchases in (T, T+t] | x, t_x, T] under BG/NBD (paper eq. 10).

    = P(alive) * E[purchases in the next t | alive]; see :func:`_future_core` for the
    numerically careful hypergeometric evaluation and the a == 1 edge.  Guarantees:
    0 for t == 0, >= 0 and non-decreasing in t (up to floating-point rounding).  With
    a <= 1 the expectation grows without bound as t grows (E[1/p] is infinite), which
    is a property of the model, not an error.  Times in the model unit; scalars in, float
    out; arrays broadcast.  Raises ValueError on t < 0 or invalid statistics.
    """
    t_arr, x, t_x, T = _as_float_arrays(t, x, t_x, T)
    _check_bg_stats(x, t_x, T)
    if np.any(t_arr < 0) or not np.all(np.isfinite(t_arr)):
        raise ValueError("t must be finite and >= 0")
    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    out = np.empty(x.shape)
    for idx in np.ndindex(x.shape):
        xi, txi, Ti = float(x[idx]), float(t_x[idx]), float(T[idx])
        out[idx] = _p_alive_scalar(r, alpha, a, b, xi, txi, Ti) * _future_core(
            r, alpha, a, b, float(t_arr[idx]), xi, Ti
        )
    return _scalar_or_array(out)


def expected_avg_value(gg: GammaGammaParams, x: Any, m: Any) -> float | np.ndarray:
    """Posterior mean value of a future purchase under Gamma-Gamma (minor units).

    = p (gamma + x m) / (p x + q - 1): a weighted average of the population mean
    p*gamma/(q-1) and the customer's own mean m, the weight on m growing with x.  For
    x == 0, m is ignored and the population mean is returned.  Raises ValueError for
    q <= 1 (infinite population mean), x < 0 or m < 0.
    """
    x, m = _as_float_arrays(x, m)
    if gg.q <= 1.0:
        raise ValueError("Gamma-Gamma with q <= 1 has no finite mean spend")
    if np.any(x < 0) or np.any(~np.isfinite(x)):
        raise ValueError("x must be finite and >= 0")
    m = np.where(x > 0, m, 0.0)
    if np.any(m < 0) or np.any(~np.isfinite(m)):
        raise ValueError("m must be finite and >= 0 where x > 0")
    return _scalar_or_array(gg.p * (gg.gamma + x * m) / (gg.p * x + gg.q - 1.0))


# --------------------------------------------------------------- day-based entry


def fit_shop(
    stats: Sequence[tuple[int, int, int, int]],
    unit_days: int,
    *,
    as_of: date | None = None,
    spend_floor: float = 0.0,
    kind: str = "shop",
) -> ShopModel:
    """Fit a shop's BG/NBD (+ Gamma-Gamma) model from per-customer day statistics.

    ``stats``: one ``(x, t_x_days, T_days, repeat_spend_minor)`` per customer with at
    least one purchase; ``unit_days``: 1 (days) or 7 (weeks); ``as_of`` is recorded;
    ``kind`` labels the model (``"pooled"`` when the stats come from several shops).

    Customers with ``T_days <= 0`` are left out: at T == 0 (first purchase on the as-of
    date) their BG/NBD likelihood is identically 1, i.e. they carry no information, and
    T < 0 (first purchase after the as-of date) lies outside the observation window.
    For the rest the tuple must be consistent, else ValueError: 0 <= x <= t_x_days <=
    T_days (x repeat *days* fit in t_x days), x == 0 iff t_x_days == 0, and
    repeat_spend >= 0 with repeat_spend == 0 when x == 0.

    Gamma-Gamma uses the repeat buyers with repeat_spend > 0 (its density needs m > 0;
    fully refunded or free repeat days are left out) whose mean repeat spend is at least
    ``spend_floor`` times the median of those means (the robust option: one near-zero
    mean drags p and gamma far off, see the README); it is None if fewer than
    :data:`MIN_GG_CUSTOMERS` remain, if its fit fails, or if q <= 1 (then ``gg_fit``
    says so).  Both fits carry :class:`FitDiagnostics`; check :attr:`ShopModel.sound`
    before serving the model.

    Raises ValueError if no customer has T_days > 0 or none has x > 0 (BG/NBD
    unidentified), on malformed input, or if the BG/NBD optimisation fails.
    """
    if isinstance(unit_days, bool) or unit_days not in (1, 7):
        raise ValueError(f"unit_days must be 1 or 7, got {unit_days!r}")
    if not (math.isfinite(spend_floor) and 0.0 <= spend_floor < 1.0):
        raise ValueError(f"spend_floor must be in [0, 1), got {spend_floor!r}")
    arr = np.asarray(stats, dtype=np.int64) if len(stats) else np.empty((0, 4), np.int64)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError("stats must be a sequence of (x, t_x_days, T_days, repeat_spend) tuples")
    arr = arr[arr[:, 2] > 0]
    if arr.shape[0] == 0:
        raise ValueError("no customer with T_days > 0 to fit")
    x, tx, tt, spend = arr.T
    bad = (
        (x < 0) | (tx < x) | (tx > tt) | ((x == 0) != (tx == 0))
        | (spend < 0) | ((x == 0) & (spend != 0))
    )
    if np.any(bad):
        i = int(np.argmax(bad))
        raise ValueError(f"inconsistent customer statistics {tuple(int(v) for v in arr[i])}")
    if not np.any(x > 0):
        raise ValueError("no repeat buyer (x > 0): BG/NBD cannot be fitted")
    u = float(unit_days)
    xf = x.astype(np.float64)
    bg, ll = fit_bgnbd(xf, tx / u, tt / u)
    bg_fit = bgnbd_diagnostics(bg, xf, tx / u, tt / u)

    sel = (x > 0) & (spend > 0)
    excluded = 0
    if spend_floor > 0.0 and np.any(sel):
        means = spend / np.maximum(x, 1)
        keep = sel & (means >= spend_floor * float(np.median(means[sel])))
        excluded, sel = int(sel.sum() - keep.sum()), keep
    gg: GammaGammaParams | None = None
    gll: float | None = None
    gg_fit: FitDiagnostics | None = None
    n_gg = int(sel.sum())
    if n_gg >= MIN_GG_CUSTOMERS:
        xs = xf[sel]
        ms = spend[sel] / xs
        try:
            cand, cll = fit_gamma_gamma(xs, ms)
        except ValueError:
            cand = None  # documented: the shop then has no spend model
        if cand is not None:
            gg_fit = gamma_gamma_diagnostics(cand, xs, ms)
            if cand.q > 1.0:
                gg, gll = cand, cll
    return ShopModel(
        bgnbd=bg,
        gamma_gamma=gg,
        customers=int(arr.shape[0]),
        repeat_customers=int((x > 0).sum()),
        gg_customers=n_gg if gg is not None else 0,
        log_likelihood=ll,
        gg_log_likelihood=gll,
        unit_days=unit_days,
        fitted_as_of=as_of,
        bgnbd_fit=bg_fit,
        gg_fit=gg_fit,
        kind=kind,
        gg_excluded=excluded,
    )


# ----------------------------------------------------------- eligibility, pooling

#: Fewest buyers (customers with T > 0) a shop needs for a model of its own.  This is
#: the one place the default lives: ``loyalty replay``, ``loyalty clv fit``/``check``
#: and the service (setting ``clv_min_customers``, whose default must equal it) all
#: decide through :func:`ineligibility`.  Smaller shops are scored by the pooled model.
MIN_CUSTOMERS = 200
#: Fewest repeat buyers (x > 0) a shop needs: the drop-out process is learnt from them.
MIN_REPEAT_BUYERS = 20
#: Pool of every shop unless a policy names another group.
DEFAULT_POOL = "all"


def ineligibility(stats: Sequence[tuple[int, int, int, int]],
                  min_customers: int = MIN_CUSTOMERS) -> str | None:
    """Why a shop with these ``(x, t_x_days, T_days, spend)`` statistics gets no model of
    its own, or None when it is eligible: at least ``min_customers`` buyers with
    T_days > 0 and :data:`MIN_REPEAT_BUYERS` of them repeat buyers.  Below that the
    likelihood is too flat for meaningful estimates (a handful of customers can give
    r ~ 1e6); the shop is scored by its pool's model instead."""
    buyers = sum(1 for s in stats if s[2] > 0)
    repeat = sum(1 for s in stats if s[2] > 0 and s[0] > 0)
    if buyers < min_customers:
        return f"{buyers} buyers, fewer than the minimum {min_customers}"
    if repeat < MIN_REPEAT_BUYERS:
        return f"{repeat} repeat buyers, fewer than the minimum {MIN_REPEAT_BUYERS}"
    return None


@dataclass(frozen=True, slots=True)
class ShopFit:
    """One shop's outcome: its own ``model`` (None if ineligible or failed; present but
    not sound if degenerate), the ``reason`` it is not served (None when it is), and
    its ``pool`` name."""

    model: ShopModel | None
    reason: str | None
    pool: str


@dataclass(frozen=True, slots=True)
class ClvFits:
    """Every shop's fit plus one pooled model per pool; :meth:`select` picks what to serve."""

    shops: Mapping[str, ShopFit]
    pooled: Mapping[str, ShopModel | None]
    pooled_reasons: Mapping[str, str]

    def select(self, shop_id: str) -> ShopModel | None:
        """The model that scores ``shop_id``: its own if sound, else its pool's if sound,
        else None (CLV fields null)."""
        fit = self.shops.get(shop_id)
        if fit is None:
            return None
        if fit.model is not None and fit.reason is None:
            return fit.model
        pooled = self.pooled.get(fit.pool)
        return pooled if pooled is not None and pooled.sound else None

    def describe(self, shop_id: str) -> dict[str, Any]:
        """:func:`describe` for ``shop_id`` (a pool's failure is added to the reason)."""
        fit = self.shops.get(shop_id)
        if fit is None:
            return describe(None, None, "no buyers", None)
        served = self.select(shop_id)
        reason = fit.reason
        if served is None and reason is not None and fit.pool in self.pooled_reasons:
            reason += f"; pooled model: {self.pooled_reasons[fit.pool]}"
        return describe(served, fit.model, reason, fit.pool)


def fit_models(
    by_shop: Mapping[str, Sequence[tuple[int, int, int, int]]],
    unit_days: int = 7,
    *,
    min_customers: int = MIN_CUSTOMERS,
    pools: Mapping[str, str] | None = None,
    spend_floors: Mapping[str, float] | None = None,
    pooled_spend_floor: float = 0.0,
    as_of: date | None = None,
) -> ClvFits:
    """Fit every eligible shop on its own and every pool on all its shops' customers.

    ``pools``: shop -> pool name (default :data:`DEFAULT_POOL` for every shop; the
    caller should include the currency, since spends in different currencies cannot
    share a spend model).  ``spend_floors``: shop -> Gamma-Gamma spend floor (see
    :func:`fit_shop`); the pooled fits use ``pooled_spend_floor``.

    The pooled model is fitted whenever a pool has a shop that needs it (ineligible,
    failed, or unsound), from the customers of *every* shop in the pool.  Its limits:
    it describes the pool's average customer, so a small shop whose customers buy more
    or less often than the pool's is scored with the pool's rates (its customers are
    still ranked by their own x, t_x and T), and large shops dominate the estimate.
    Never raises for a shop: a failure becomes that shop's (or pool's) reason.
    """
    pools = pools or {}
    floors = spend_floors or {}
    shops: dict[str, ShopFit] = {}
    for shop, stats in by_shop.items():
        pool = pools.get(shop, DEFAULT_POOL)
        why = ineligibility(stats, min_customers)
        model: ShopModel | None = None
        if why is None:
            try:
                model = fit_shop(stats, unit_days, as_of=as_of, spend_floor=floors.get(shop, 0.0))
                why = model.problem
            except ValueError as exc:
                why = f"fit failed: {exc}"
        shops[shop] = ShopFit(model, why, pool)
    pooled: dict[str, ShopModel | None] = {}
    pooled_reasons: dict[str, str] = {}
    for pool in sorted({f.pool for f in shops.values() if f.reason is not None}):
        stats = [s for shop, f in shops.items() if f.pool == pool for s in by_shop[shop]]
        try:
            pm = fit_shop(stats, unit_days, as_of=as_of, spend_floor=pooled_spend_floor,
                          kind="pooled")
        except ValueError as exc:
            pooled[pool] = None
            pooled_reasons[pool] = f"pooled fit failed: {exc}"
            continue
        pooled[pool] = pm
        if pm.problem is not None:
            pooled_reasons[pool] = pm.problem
    return ClvFits(shops, pooled, pooled_reasons)


def pool_name(policy: Any) -> str:
    """The pool of a shop with this policy: its ``clv_pool`` within its currency (spends in
    different currencies cannot share a spend model)."""
    return f"{policy.clv_pool}/{policy.currency}"


def fit_models_for(
    by_shop: Mapping[str, Sequence[tuple[int, int, int, int]]],
    policies: Any,
    unit_days: int = 7,
    *,
    min_customers: int = MIN_CUSTOMERS,
    as_of: date | None = None,
) -> ClvFits:
    """:func:`fit_models` with each shop's pool and spend floor read from its policy
    (``policies.for_shop(shop)``; the pooled fits use ``policies.default``'s floor)."""
    pols = {shop: policies.for_shop(shop) for shop in by_shop}
    return fit_models(
        by_shop, unit_days, min_customers=min_customers,
        pools={s: pool_name(p) for s, p in pols.items()},
        spend_floors={s: float(p.clv_spend_floor) for s, p in pols.items()},
        pooled_spend_floor=float(policies.default.clv_spend_floor), as_of=as_of)


def describe(served: ShopModel | None, own: ShopModel | None, reason: str | None,
             pool: str | None) -> dict[str, Any]:
    """What a shop is told about its CLV model (``clv fit``, ``GET /shops/{shop}``).

    ``model``: ``"shop"``, ``"pooled"`` or None (no CLV); ``reason``: why the shop's own
    fit is not served (None when it is); ``parameters``/``diagnostics``: those of the
    served model; ``shop_fit``: the diagnostics of the shop's own fit when it exists but
    is not served (degenerate or not converged), so the problem is visible.
    """
    out: dict[str, Any] = {"model": None if served is None else served.kind, "pool": pool,
                           "reason": reason, "parameters": None, "diagnostics": None,
                           "customers": None, "shop_fit": None}
    if served is not None:
        d = served.to_dict()
        out["parameters"] = {"bgnbd": d["bgnbd"], "gamma_gamma": d["gamma_gamma"],
                             "unit_days": served.unit_days}
        out["diagnostics"] = d["diagnostics"]
        out["customers"] = served.customers
    if own is not None and own is not served:
        out["shop_fit"] = {"customers": own.customers, **own.to_dict()["diagnostics"]}
    return out


def _finite_or_none(v: float, ndigits: int) -> float | None:
    return round(v, ndigits) if math.isfinite(v) else None


def score(
    model: ShopModel,
    x: int,
    t_x_days: int,
    T_days: int,
    repeat_spend: int,
    margin_rate: Fraction | Decimal,
) -> dict[str, float | int | None]:
    """Score one customer (with at least one purchase) in closed form. Runs per event.

    Returns a JSON-ready dict:

    * ``p_alive``: float rounded to 6 decimals, in (0, 1].
    * ``expected_purchases_90d``: expected repeat purchase days in the next 90 days,
      rounded to 4 decimals.
    * ``expected_avg_value``: Gamma-Gamma posterior mean spend per purchase day, integer
      minor units rounded half-even; None when the model has no Gamma-Gamma part.
    * ``clv_365d``: expected purchase days in the next 365 days x ``expected_avg_value``
      (the reported integer, so the fields stay mutually consistent) x ``margin_rate``,
      computed exactly (the float expectation taken at its exact binary value, the
      rate as written) and rounded half-even to minor units; None when
      ``expected_avg_value`` is None.

    A value that comes out non-finite (only conceivable for degenerate parameters at
    the optimiser's bounds) is reported as None rather than raising, so scoring never
    stops the stream.  Raises ValueError for inconsistent statistics (same rules as
    :func:`fit_shop`, plus T_days >= 0) or a margin_rate outside [0, 1], and TypeError
    for a float margin_rate (exactness would be lost).
    """
    if isinstance(margin_rate, Decimal):
        if not margin_rate.is_finite():
            raise ValueError(f"margin_rate must be finite, got {margin_rate!r}")
        rate = Fraction(margin_rate)
    elif isinstance(margin_rate, (Fraction, int)) and not isinstance(margin_rate, bool):
        rate = Fraction(margin_rate)
    else:
        raise TypeError(f"margin_rate must be a Fraction or Decimal, got {type(margin_rate).__name__}")
    if not 0 <= rate <= 1:
        raise ValueError(f"margin_rate must be in [0, 1], got {margin_rate}")
    if not (
        0 <= x <= t_x_days <= T_days and (x == 0) == (t_x_days == 0)
        and repeat_spend >= 0 and (x > 0 or repeat_spend == 0)
    ):
        raise ValueError(
            f"inconsistent customer statistics x={x} t_x_days={t_x_days} T_days={T_days} "
            f"repeat_spend={repeat_spend}"
        )
    bg = model.bgnbd
    r, alpha, a, b = bg.r, bg.alpha, bg.a, bg.b
    u = model.unit_days
    xf, txf, Tf = float(x), t_x_days / u, T_days / u
    pa = _p_alive_scalar(r, alpha, a, b, xf, txf, Tf)
    e90 = pa * _future_core(r, alpha, a, b, 90.0 / u, xf, Tf)
    e365 = pa * _future_core(r, alpha, a, b, 365.0 / u, xf, Tf)

    avg: int | None = None
    clv: int | None = None
    gg = model.gamma_gamma
    if gg is not None:
        # p(gamma + x m)/(p x + q - 1) with x m == repeat_spend: no division by x needed
        v = gg.p * (gg.gamma + repeat_spend) / (gg.p * xf + gg.q - 1.0)
        if math.isfinite(v):
            avg = round(v)  # float round() is half-even on the exact binary value
            if math.isfinite(e365):
                clv = round(Fraction(e365) * avg * rate)  # Fraction round(): half-even
    return {
        "p_alive": _finite_or_none(pa, 6),
        "expected_purchases_90d": _finite_or_none(e90, 4),
        "expected_avg_value": avg,
        "clv_365d": clv,
    }
