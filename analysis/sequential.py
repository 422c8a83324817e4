"""Planning numbers and the sequential test of a declared hypothesis: pure functions, no I/O.

Planning (fixed design): the power of a paired or two-sample t-test from the noncentral t
distribution, the minimal detectable effect at 80 % power for the seeds at hand, and the
seeds needed for a declared smallest effect.

Sequential design ("seeds until the answer is in"): a group-sequential paired test with
Lan-DeMets error spending of O'Brien-Fleming type (Lan and DeMets 1983, Biometrika 70:659;
O'Brien and Fleming 1979, Biometrics 35:549), looks after every round of seeds from
``min_seeds`` to ``max_seeds`` (Jennison and Turnbull 2000, "Group Sequential Methods with
Applications to Clinical Trials", ch. 7). The statistic is the paired t statistic, shown on
the z scale through its p-value (z = Phi^-1(F_t(t; n - 1)), their section 11.4), since the
seed-to-seed variance is unknown. ``efficacy_bounds`` gives the textbook z boundaries (the
recursive integration of Armitage, McPherson and Rowe 1969; their ch. 19); with 3 to 12 seeds
those let the t sequence exceed alpha (about 0.055 for 0.05), so ``t_bounds`` meets the same
spending for the t sequence itself, calibrated once on seeded simulated null sequences.

- efficacy: z >= c_k, c from spending ``alpha`` (one-sided; ``alpha / 2`` per side for a
  two-sided hypothesis);
- futility (the smallest effect excluded): the one-sided test of "effect >= smallest_effect"
  rejects, i.e. z_delta <= -f_k with z_delta the same statistic for mean - smallest_effect and
  f from spending ``futility`` with the same function. Futility is non-binding: the efficacy
  boundaries ignore it, so stopping early for futility never raises the type-I error, and at
  a true effect equal to the smallest effect it stops for futility with probability <=
  ``futility``.
- at ``max_seeds`` without a crossing the answer is "max reached" (undecided).

Equivalence (``direction: equivalent``, |arm - reference| < smallest_effect): Schuirmann's two
one-sided tests (TOST; Schuirmann 1987, J Pharmacokinet Biopharm 15:657), each at the full
alpha (an intersection-union test needs no split), run group-sequentially on the same
boundaries (Jennison and Turnbull 2000, ch. 6). The statistic is the smaller of the two
z-scale statistics, of "difference > -smallest_effect" and of "difference < +smallest_effect":
efficacy (equivalent) when it reaches c_k, futility (not equivalent: the difference lies
beyond the margin) when it falls to -f_k, which is one of the two one-sided tests of
"|difference| > smallest_effect" rejecting its null; f_k spends alpha here, not ``futility``,
since "not equivalent" is a claim of its own. The planning numbers (``power_tost``) assume
the paired test, or a pooled-variance two-sample one; Welch's test, used where seeds do not
pair, has somewhat less power at very few seeds.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import integrate, optimize
from scipy import stats as sps

ALPHA = 0.05
TARGET_POWER = 0.8
DIRECTIONS = ("greater", "less", "two-sided", "equivalent")
FUTILITY = 0.1
"""Default probability of a futility stop when the true effect equals the smallest effect."""


# --- planning: power, minimal detectable effect, seeds needed ------------------------------


def _nct_tail(x: float, df: float, nc: float, upper: bool) -> float:
    """P(T >= x) (upper) or P(T <= x) of a noncentral t with df degrees of freedom.

    scipy's noncentral t returns NaN far in a tail at small df (df 1, nc 8.3, x -12.7: the
    bug behind a power of 6e-06); there the probability is integrated from the definition
    T = (Z + nc) / sqrt(V / df), V ~ chi2(df): P(T <= x) = E_V[Phi(x sqrt(V / df) - nc)].
    """
    p = float(sps.nct.sf(x, df, nc) if upper else sps.nct.cdf(x, df, nc))
    if math.isfinite(p):
        return min(1.0, max(0.0, p))
    tail = sps.norm.sf if upper else sps.norm.cdf

    def f(v: float) -> float:
        return float(tail(x * math.sqrt(v / df) - nc) * sps.chi2.pdf(v, df))

    p, _ = integrate.quad(f, 0.0, np.inf, limit=200)
    return min(1.0, max(0.0, float(p)))


def t_power(nc: float, df: float, alpha: float = ALPHA, alternative: str = "two-sided") -> float:
    """Power of a t-test with df degrees of freedom at noncentrality nc >= 0 (the effect in
    the tested direction). Never below alpha: the t-test is unbiased, so the clip at the end
    only removes rounding."""
    if not (df >= 1 and math.isfinite(nc)):
        return math.nan
    nc = abs(nc)
    if alternative == "two-sided":
        tc = float(sps.t.isf(alpha / 2, df))
        p = _nct_tail(tc, df, nc, True) + _nct_tail(-tc, df, nc, False)
    else:
        p = _nct_tail(float(sps.t.isf(alpha, df)), df, nc, True)
    return min(1.0, max(alpha, p))


def power_paired(effect: float, n: int, alpha: float = ALPHA, alternative: str = "two-sided") -> float:
    """Power of the one-sample (paired) t-test for standardized effect |d| at n pairs."""
    if n < 2 or not math.isfinite(effect):
        return math.nan
    return t_power(abs(effect) * math.sqrt(n), n - 1, alpha, alternative)


def power_welch(effect: float, n1: int, n2: int, alpha: float = ALPHA, alternative: str = "two-sided") -> float:
    """Power of the two-sample t-test (pooled df) for standardized effect |d|."""
    if n1 < 2 or n2 < 2 or not math.isfinite(effect):
        return math.nan
    return t_power(abs(effect) * math.sqrt(n1 * n2 / (n1 + n2)), n1 + n2 - 2, alpha, alternative)


def mde(n: int, paired: bool = True, n2: int | None = None, alpha: float = ALPHA, power: float = TARGET_POWER,
        alternative: str = "two-sided") -> float:
    """Minimal detectable effect: the smallest standardized effect (difference / sd) that the
    test detects with ``power`` at these seeds (multiply by the sd for metric units)."""
    n2 = n if n2 is None else n2
    if n < 2 or (not paired and n2 < 2):
        return math.nan

    def gap(d: float) -> float:
        p = power_paired(d, n, alpha, alternative) if paired else power_welch(d, n, n2, alpha, alternative)
        return p - power

    return float(optimize.brentq(gap, 0.0, 1e4, xtol=1e-6))


def seeds_for_power(effect: float, paired: bool = True, power: float = TARGET_POWER, n_max: int = 1000,
                    alpha: float = ALPHA, alternative: str = "two-sided") -> float:
    """Smallest number of seeds (per arm) that gives ``power`` for the standardized effect;
    inf beyond n_max."""
    if not math.isfinite(effect) or effect == 0:
        return math.inf

    def ok(n: int) -> bool:
        p = power_paired(effect, n, alpha, alternative) if paired else power_welch(effect, n, n, alpha, alternative)
        return p >= power

    return _first_n(ok, n_max)


def _first_n(ok: Callable[[int], bool], n_max: int) -> float:
    """The first n in 2..n_max with ok(n), by bisection (power grows with n); inf if none."""
    if not ok(n_max):
        return math.inf
    lo, hi = 1, n_max
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if ok(mid) else (mid, hi)
    return float(hi)


def power_tost(margin: float, n: int, alpha: float = ALPHA, paired: bool = True, n2: int | None = None) -> float:
    """Power of the two one-sided tests to show equivalence within +-``margin`` (standardized:
    margin / sd) when the true difference is 0, paired (n differences) or two-sample (n and
    n2 seeds, pooled df).

    Both tests reject iff |mean| < margin sd - t_c se, with se = s / sqrt(n_eff) and s the
    sample sd; given s that has probability 2 Phi(margin sqrt(n_eff) - t_c s / sd) - 1 (when
    positive), integrated over s^2 / sd^2 ~ chi2(df) / df. Exact, not the usual 1 - 2 beta
    approximation, which is poor at the few seeds a sweep has."""
    n2 = n if n2 is None else n2
    if n < 2 or (not paired and n2 < 2) or not math.isfinite(margin) or margin <= 0:
        return math.nan
    df = n - 1 if paired else n + n2 - 2
    n_eff = n if paired else n * n2 / (n + n2)
    tc = float(sps.t.isf(alpha, df))
    root = margin * math.sqrt(n_eff)

    def f(v: float) -> float:
        inner = 2.0 * sps.norm.cdf(root - tc * math.sqrt(v / df)) - 1.0
        return max(0.0, float(inner)) * float(sps.chi2.pdf(v, df))

    # The integrand vanishes beyond v = df (root / tc)^2, where the interval no longer fits,
    # and the chi2 mass beyond its 1e-14 tail is below any power worth printing.
    top = min(df * (root / tc) ** 2, float(sps.chi2.isf(1e-14, df)))
    p, _ = integrate.quad(f, 0.0, top, limit=200)
    return min(1.0, max(0.0, float(p)))


def seeds_for_tost(margin: float, paired: bool = True, power: float = TARGET_POWER, n_max: int = 1000,
                   alpha: float = ALPHA) -> float:
    """Smallest number of seeds (per arm) at which the two one-sided tests show equivalence
    within +-``margin`` (standardized) with ``power`` when the true difference is 0; inf
    beyond n_max."""
    if not math.isfinite(margin) or margin <= 0:
        return math.inf

    return _first_n(lambda n: power_tost(margin, n, alpha, paired) >= power, n_max)


def mde_tost(n: int, paired: bool = True, n2: int | None = None, alpha: float = ALPHA,
             power: float = TARGET_POWER) -> float:
    """The smallest standardized margin that the two one-sided tests show with ``power`` at
    these seeds when the true difference is 0 (multiply by the sd for metric units)."""
    n2 = n if n2 is None else n2
    if n < 2 or (not paired and n2 < 2):
        return math.nan
    return float(optimize.brentq(lambda m: power_tost(m, n, alpha, paired, n2) - power, 1e-6, 100.0, xtol=1e-6))


# --- the group-sequential boundaries -------------------------------------------------------


def obf_spending(t: float | np.ndarray, alpha: float) -> np.ndarray:
    """Lan-DeMets O'Brien-Fleming-type spending: the one-sided error spent by information
    fraction t, alpha(t) = 2 - 2 Phi(z_{1 - alpha/2} / sqrt(t)) (alpha at t = 1)."""
    t = np.clip(np.asarray(t, dtype=float), 1e-12, 1.0)
    return 2.0 * sps.norm.sf(sps.norm.isf(alpha / 2) / np.sqrt(t))


def efficacy_bounds(ns: Sequence[int], n_max: int, alpha: float, grid: int = 1201) -> np.ndarray:
    """One-sided z boundaries c_k for looks after ns[k] seeds (information n_k / n_max): under
    the null the probability of first crossing at look k equals the spending increment.

    The score S_k = Z_k sqrt(n_k) has independent N(0, n_k - n_{k-1}) increments; the density
    of S among the sequences still running is carried from look to look on a grid (Simpson's
    rule), and c_k solves the exit probability by Brent's method.
    """
    ns = [int(n) for n in ns]
    if not ns or any(b <= a for a, b in zip(ns, ns[1:])) or ns[0] < 1 or ns[-1] > n_max:
        raise ValueError(f"looks must be increasing seed counts in [1, {n_max}], got {ns}")
    spent = obf_spending(np.array(ns) / n_max, alpha)
    bounds = np.empty(len(ns))
    bounds[0] = sps.norm.isf(spent[0])
    # Sub-density of S_1 below its boundary.
    s = np.linspace(-10 * math.sqrt(ns[0]), bounds[0] * math.sqrt(ns[0]), grid)
    dens = sps.norm.pdf(s, scale=math.sqrt(ns[0]))
    for k in range(1, len(ns)):
        step = math.sqrt(ns[k] - ns[k - 1])
        target = spent[k] - spent[k - 1]
        root = math.sqrt(ns[k])
        args = (dens, s, root, step)
        if _exit_prob(50.0, *args) >= target:  # nothing left to spend at this look
            bounds[k] = 50.0
        else:
            bounds[k] = optimize.brentq(lambda c, a=args, g=target: _exit_prob(c, *a) - g, -20.0, 50.0, xtol=1e-9)
        new_s = np.linspace(-10 * root, bounds[k] * root, grid)
        kernel = sps.norm.pdf((new_s[:, None] - s[None, :]) / step) / step
        dens = integrate.simpson(kernel * dens[None, :], x=s, axis=1)
        s = new_s
    return bounds


def _exit_prob(c: float, dens: np.ndarray, s: np.ndarray, root: float, step: float) -> float:
    """Probability of crossing c at a look from the running sub-density ``dens`` on grid ``s``."""
    return float(integrate.simpson(dens * sps.norm.sf((c * root - s) / step), x=s))


CALIBRATION_SIMS = 400_000
CALIBRATION_SEED = 20_261_122


@functools.lru_cache(maxsize=128)
def t_bounds(ns: tuple[int, ...], n_max: int, alpha: float, two_sided: bool = False) -> np.ndarray:
    """z-scale boundaries for the paired t statistic (z = its one-sided p-value mapped to the
    normal scale) at looks after ns seeds, meeting the same Lan-DeMets O'Brien-Fleming spending
    for the t sequence itself.

    With few seeds the mapped t statistics are not jointly the z sequence the textbook
    boundaries assume (at 3 to 12 seeds those give a type-I error of ~0.055 for a nominal
    0.05), so each look's boundary is calibrated on ``CALIBRATION_SIMS`` null sequences of
    normal differences (seeded: the same boundaries every time): of the sequences still
    running, exactly the spending increment crosses (unspent error carries to the next look).
    Under the null the law of the t sequence does not depend on the sd, so one calibration
    serves every sweep. ``two_sided``: on |z|, alpha being the total over both sides.
    """
    ns = tuple(int(n) for n in ns)
    if not ns or any(b <= a for a, b in zip(ns, ns[1:])) or ns[0] < 2 or ns[-1] > n_max:
        raise ValueError(f"looks must be increasing seed counts in [2, {n_max}], got {ns}")
    rng = np.random.default_rng(CALIBRATION_SEED)
    x = rng.standard_normal((CALIBRATION_SIMS, ns[-1]))
    s1, s2 = np.cumsum(x, axis=1), np.cumsum(x * x, axis=1)
    del x
    spent = obf_spending(np.array(ns) / n_max, alpha) * CALIBRATION_SIMS
    alive = np.ones(CALIBRATION_SIMS, dtype=bool)
    crossed = 0
    bounds = np.empty(len(ns))
    for k, n in enumerate(ns):
        mean = s1[:, n - 1] / n
        sd = np.sqrt(np.maximum(s2[:, n - 1] - n * mean**2, 0.0) / (n - 1))
        with np.errstate(divide="ignore", invalid="ignore"):
            t = mean / (sd / math.sqrt(n))
        t = np.abs(t) if two_sided else t
        # The map t -> z is monotone at a look, so the crossing set is found on t directly.
        top = -np.sort(-t[alive])
        allowed = int(math.floor(spent[k])) - crossed
        if allowed <= 0:  # nothing to spend yet: no sequence may stop here
            c = float(top[0]) * (1 + 1e-9) + 1e-9
        else:
            c = 0.5 * (float(top[allowed - 1]) + float(top[allowed]))
        hit = alive & (t >= c)
        crossed += int(hit.sum())
        alive &= ~hit
        bounds[k] = float(t_to_z(c, n - 1))
    return bounds


def t_to_z(t: np.ndarray | float, df: np.ndarray | float) -> np.ndarray:
    """The z with the same one-sided p-value as t with df degrees of freedom."""
    return sps.norm.isf(sps.t.sf(t, df))


# --- one hypothesis: the looks and the decision ---------------------------------------------


@dataclass(frozen=True)
class Design:
    """A declared hypothesis run sequentially: paired differences arm - reference (its
    baseline unless the hypothesis names another), one per seed."""

    smallest_effect: float
    direction: str = "greater"
    alpha: float = ALPHA
    """Type-I error over all looks (one-sided for greater / less, total for two-sided; for
    equivalent, that of each of the two one-sided tests, which is the whole test's)."""
    min_seeds: int = 3
    max_seeds: int = 12
    futility: float = FUTILITY

    def __post_init__(self) -> None:
        if self.direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got {self.direction!r}")
        if not (2 <= self.min_seeds <= self.max_seeds):
            raise ValueError(f"need 2 <= min_seeds <= max_seeds, got {self.min_seeds}, {self.max_seeds}")
        if not (0 < self.alpha < 0.5 and 0 < self.futility < 0.5 and self.smallest_effect > 0):
            raise ValueError("need 0 < alpha, futility < 0.5 and smallest_effect > 0")

    def looks(self, upto: int | None = None) -> list[int]:
        """Seed counts of the planned looks: every round from min_seeds to max_seeds."""
        top = self.max_seeds if upto is None else min(upto, self.max_seeds)
        return list(range(self.min_seeds, top + 1))

    def bounds(self, ns: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """(efficacy, futility) z-scale boundaries of the paired t statistic at looks after ns seeds."""
        two = self.direction == "two-sided"
        # "Not equivalent" is a claim (the difference lies beyond the margin), made at alpha
        # like equivalence itself; elsewhere futility only stops an arm, at FUTILITY.
        fut = self.alpha if self.direction == "equivalent" else self.futility
        return (t_bounds(tuple(ns), self.max_seeds, self.alpha, two),
                t_bounds(tuple(ns), self.max_seeds, fut))


@dataclass
class Look:
    n: int
    estimate: float
    statistic: float
    """z-scale paired t statistic of the difference (towards the declared direction);
    equivalence: the smaller of the two one-sided statistics against the margins."""
    efficacy_bound: float
    futility_statistic: float
    """z-scale statistic of the test of 'effect >= smallest_effect' (negative: effect smaller);
    equivalence: the statistic again (at or below -futility_bound: beyond the margin)."""
    futility_bound: float
    decision: str
    """continue, efficacy, futility or max reached."""


@dataclass
class Decision:
    decision: str
    """efficacy, futility, max reached, or continue (more seeds needed); 'too few seeds' before min_seeds."""
    n: int
    estimate: float
    ci_low: float
    ci_high: float
    """95 % t interval at the stopping look, not adjusted for the sequential stopping."""
    looks: list[Look] = field(default_factory=list)


def _z_stats(d: np.ndarray, delta: float) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise z-scale statistics of mean(d) > 0 and of mean(d) > delta (d: sims x n)."""
    n = d.shape[-1]
    mean = d.mean(axis=-1)
    se = d.std(axis=-1, ddof=1) / math.sqrt(n)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(se > 0, t_to_z(mean / se, n - 1), 0.0)
        zd = np.where(se > 0, t_to_z((mean - delta) / se, n - 1), 0.0)
    return z, zd


def _classify(z: np.ndarray, zd: np.ndarray, z_neg: np.ndarray | None, c: float, f: float) -> np.ndarray:
    """0 continue, 1 efficacy, 2 futility. z_neg: for two-sided, the statistic of mean < -delta."""
    if z_neg is None:
        eff = z >= c
        fut = zd <= -f
    else:
        eff = np.abs(z) >= c
        fut = (zd <= -f) & (z_neg <= -f)  # both one-sided tests exclude |effect| >= delta
    return np.where(eff, 1, np.where(fut, 2, 0))


def _look(x: np.ndarray, design: Design, c: float, f: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(codes, statistic, futility statistic) of one look over rows of differences x (sims x n,
    already signed towards the declared direction)."""
    delta = design.smallest_effect
    if design.direction == "equivalent":
        # TOST: the weaker of "difference > -delta" and "difference < +delta" on the z scale.
        s = np.minimum(_z_stats(x, -delta)[1], _z_stats(-x, -delta)[1])
        return np.where(s >= c, 1, np.where(s <= -f, 2, 0)), s, s
    z, zd = _z_stats(x, delta)
    z_neg = _z_stats(-x, delta)[1] if design.direction == "two-sided" else None
    return _classify(z, zd, z_neg, c, f), z, zd


def decide(diffs: Sequence[float], design: Design, looks: Sequence[int] | None = None) -> Decision:
    """Replay the looks over the paired differences (in seed order) and stop at the first
    crossing. ``looks`` are the seed counts at which the sweep looked (default: every round
    from min_seeds); the answer at fewer than min_seeds is 'too few seeds'."""
    d = np.asarray(list(diffs), dtype=float)
    d = d[np.isfinite(d)]
    sign = -1.0 if design.direction == "less" else 1.0
    ns = [n for n in (looks if looks is not None else design.looks(len(d))) if n <= len(d)]
    if len(d) < design.min_seeds or not ns:
        return Decision("too few seeds", len(d), *_estimate(d), [])
    c, f = design.bounds(ns)
    out: list[Look] = []
    for k, n in enumerate(ns):
        codes, z, zd = _look(sign * d[None, :n], design, c[k], f[k])
        code = int(codes[0])
        verdict = ("continue", "efficacy", "futility")[code]
        if verdict == "continue" and n >= design.max_seeds:
            verdict = "max reached"
        out.append(Look(n, float(d[:n].mean()), float(z[0]), float(c[k]), float(zd[0]), float(f[k]), verdict))
        if verdict != "continue":
            return Decision(verdict, n, *_estimate(d[:n]), out)
    return Decision("continue", ns[-1], *_estimate(d[: ns[-1]]), out)


def _estimate(d: np.ndarray) -> tuple[float, float, float]:
    if not len(d):
        return math.nan, math.nan, math.nan
    m = float(d.mean())
    if len(d) < 3 or d.std(ddof=1) == 0:
        return m, math.nan, math.nan
    ci = sps.ttest_1samp(d, 0.0).confidence_interval(0.95)
    return m, float(ci.low), float(ci.high)


# --- simulation of the design (no training) ---------------------------------------------------


def simulate(design: Design, effect: float, sd: float, n_sims: int = 2000, seed: int = 0) -> dict[str, float]:
    """Run the design on ``n_sims`` sequences of normal paired differences (mean ``effect``,
    sd ``sd``): the fractions stopped at efficacy / futility / max, and the mean seeds used."""
    rng = np.random.default_rng(seed)
    d = rng.normal(effect, sd, size=(n_sims, design.max_seeds))
    if design.direction == "less":
        d = -d
    ns = design.looks()
    c, f = design.bounds(ns)
    result = np.zeros(n_sims, dtype=int)  # 0 running / max reached, 1 efficacy, 2 futility
    used = np.full(n_sims, design.max_seeds)
    running = np.ones(n_sims, dtype=bool)
    for k, n in enumerate(ns):
        code = _look(d[:, :n], design, c[k], f[k])[0]
        stop = running & (code > 0)
        result[stop], used[stop] = code[stop], n
        running &= ~stop
    return {"efficacy": float((result == 1).mean()), "futility": float((result == 2).mean()),
            "max_reached": float((result == 0).mean()), "mean_seeds": float(used.mean())}
