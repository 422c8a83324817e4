"""Minimal adversarial perturbations (L2, Linf) with an ensemble of attacks.

A small Foolbox-like interface: every attack is an ``Attack`` with
``run(model, x, y, starting_points=None) -> adversarials`` on float images in [0, 1].
Attacks may fail on some images; the ensemble never trusts them: each candidate is run
through the model again and only a changed decision counts. Per image the smallest
verified perturbation is kept, clean misclassifications count 0 and images no attack
broke count +inf.

Default recipe (METHOD.md): L2 = DDN, then Brendel-Bethge L2 started from DDN's points;
Linf = FMN-Linf, then Brendel-Bethge Linf. Foolbox 3.3.4's ``L2FMNAttack`` is not used:
its projection never applies epsilon (``factor = minimum(1, norms / norms)``).
"""

from __future__ import annotations

import math
import os
import time
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from neuroreg.evaluate.common import predict, progress
from neuroreg.registry import Registry

os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")

BOUNDS = (0.0, 1.0)
NORMS = ("l2", "linf")


# --- norms --------------------------------------------------------------------------


def perturbation_norms(delta: Tensor, norm: str) -> Tensor:
    """Per-image L2 or Linf norm (float64) of a batch of perturbations."""
    flat = delta.detach().reshape(len(delta), -1).double()
    if norm == "l2":
        return flat.norm(p=2, dim=1)
    if norm == "linf":
        return flat.abs().amax(dim=1) if flat.shape[1] else torch.zeros(len(flat), dtype=torch.float64)
    raise ValueError(f"unknown norm {norm!r}; use 'l2' or 'linf'")


# --- the attack interface --------------------------------------------------------------


class Attack(ABC):
    """One attack for one norm. ``run`` returns a candidate per image (the input where it failed)."""

    name: str = "attack"
    norm: str = "l2"
    needs_start: bool = False
    """True for refiners (Brendel-Bethge): they run only from verified adversarial starting points."""

    @abstractmethod
    def run(self, model: nn.Module, x: Tensor, y: Tensor, starting_points: Tensor | None = None) -> Tensor: ...

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, norm={self.norm!r})"


def _foolbox():
    import foolbox

    return foolbox


class FoolboxAttack(Attack):
    """A Foolbox 3 minimization attack, called through ``attack.run`` (no epsilon clipping)."""

    def __init__(self, name: str, norm: str, factory: Callable[[], object], needs_start: bool = False):
        self.name, self.norm, self.needs_start = name, norm, needs_start
        self._factory = factory

    def run(self, model: nn.Module, x: Tensor, y: Tensor, starting_points: Tensor | None = None) -> Tensor:
        fb = _foolbox()
        model.eval()
        fmodel = fb.PyTorchModel(model, bounds=BOUNDS, device=x.device)
        attack = self._factory()
        criterion = fb.criteria.Misclassification(y.to(x.device))
        kwargs = {} if starting_points is None else {"starting_points": starting_points.to(x.device)}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            adv = attack.run(fmodel, x, criterion, **kwargs)
        return adv.detach()


def ddn(steps: int = 200, init_epsilon: float = 1.0) -> Attack:
    fb = _foolbox()
    return FoolboxAttack("ddn", "l2", lambda: fb.attacks.DDNAttack(init_epsilon=init_epsilon, steps=steps))


def fmn_linf(steps: int = 200) -> Attack:
    fb = _foolbox()
    return FoolboxAttack("fmn_linf", "linf", lambda: fb.attacks.LInfFMNAttack(steps=steps))


def brendel_bethge(norm: str, steps: int = 200, lr: float = 1e-3) -> Attack:
    """Brendel-Bethge refiner; needs numba and adversarial starting points."""
    fb = _foolbox()
    cls = {"l2": fb.attacks.L2BrendelBethgeAttack, "linf": fb.attacks.LinfinityBrendelBethgeAttack}[norm]
    return FoolboxAttack(f"bb_{norm}", norm, lambda: cls(steps=steps, lr=lr), needs_start=True)


def carlini_wagner(steps: int = 200, binary_search_steps: int = 6) -> Attack:
    fb = _foolbox()
    return FoolboxAttack(
        "cw_l2",
        "l2",
        lambda: fb.attacks.L2CarliniWagnerAttack(binary_search_steps=binary_search_steps, steps=steps, stepsize=0.01),
    )


# --- PGD with an epsilon grid and bisection ------------------------------------------------------


def _margin(logits: Tensor, y: Tensor) -> Tensor:
    """logit of the true class minus the best other logit (< 0 means misclassified)."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.scatter(1, y[:, None], float("-inf")).amax(dim=1)
    return true - other


def pgd(model: nn.Module, x: Tensor, y: Tensor, eps: Tensor, norm: str, steps: int) -> tuple[Tensor, Tensor]:
    """PGD on the margin loss with one epsilon per image; returns (adversarials, success).

    Hand-written because Foolbox's PGD takes one scalar epsilon per call, and the
    bisection needs a different epsilon for every image.
    """
    view = (-1,) + (1,) * (x.dim() - 1)
    eps = eps.to(x.device, x.dtype)
    step = (2.5 * eps / steps).view(view)
    delta = torch.zeros_like(x)
    best = x.clone()
    found = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    for _ in range(steps + 1):
        delta.requires_grad_(True)
        margin = _margin(model(x + delta), y)
        (grad,) = torch.autograd.grad(margin.sum(), delta)
        with torch.no_grad():
            hit = (margin < 0) & ~found
            best[hit] = (x + delta)[hit]
            found |= hit
            if norm == "linf":
                delta = delta - step * grad.sign()
                delta = torch.maximum(torch.minimum(delta, eps.view(view)), -eps.view(view))
            else:
                g = grad.reshape(len(x), -1).norm(dim=1).clamp_min(1e-12).view(view)
                delta = delta - step * grad / g
                n = delta.reshape(len(x), -1).norm(dim=1).clamp_min(1e-12)
                delta = delta * torch.clamp(eps / n, max=1.0).view(view)
            delta = (x + delta).clamp(*BOUNDS) - x
    return best.detach(), found


class PGDBisection(Attack):
    """Smallest epsilon of a grid at which PGD succeeds, refined by bisection per image."""

    def __init__(self, norm: str, grid: Sequence[float], steps: int = 40, bisection_steps: int = 6):
        self.name, self.norm = f"pgd_{norm}", norm
        self.grid, self.steps, self.bisection_steps = [float(g) for g in grid], steps, bisection_steps

    def run(self, model: nn.Module, x: Tensor, y: Tensor, starting_points: Tensor | None = None) -> Tensor:
        n = len(x)
        best = x.clone()
        hi = torch.full((n,), math.inf, dtype=torch.float64)
        lo = torch.zeros(n, dtype=torch.float64)
        for e in self.grid:
            todo = torch.isinf(hi).nonzero().flatten()
            if len(todo) == 0:
                break
            adv, ok = pgd(model, x[todo], y[todo], torch.full((len(todo),), e), self.norm, self.steps)
            ok = ok.cpu()
            best[todo[ok]] = adv[ok.to(adv.device)]
            hi[todo[ok]] = e
            lo[todo[~ok]] = e
        for _ in range(self.bisection_steps):
            todo = torch.isfinite(hi).nonzero().flatten()
            if len(todo) == 0:
                break
            mid = (lo[todo] + hi[todo]) / 2
            adv, ok = pgd(model, x[todo], y[todo], mid, self.norm, self.steps)
            ok = ok.cpu()
            best[todo[ok]] = adv[ok.to(adv.device)]
            hi[todo[ok]] = mid[ok]
            lo[todo[~ok]] = mid[~ok]
        return best


# --- the ensemble -------------------------------------------------------------------------


# --- the registry: name -> norm and a builder reading an EvalConfig's budgets --------------------


@dataclass(frozen=True)
class AttackSpec:
    name: str
    norm: str
    build: Callable[[Any], Attack]
    """Builds the attack from an EvalConfig (its steps and budgets)."""


ATTACKS: Registry[AttackSpec] = Registry("attack")


def register_attack(name: str, norm: str) -> Callable[[Callable[[Any], Attack]], Callable[[Any], Attack]]:
    """Decorator: register ``build(eval_config) -> Attack`` as attack ``name`` of ``norm``."""
    if norm not in NORMS:
        raise ValueError(f"attack {name!r}: unknown norm {norm!r}; choose from {NORMS}")

    def wrap(build: Callable[[Any], Attack]) -> Callable[[Any], Attack]:
        ATTACKS.add(name, AttackSpec(name, norm, build))
        return build

    return wrap


def attack_names(norm: str) -> tuple[str, ...]:
    """The registered attacks of one norm, in registration order."""
    return tuple(a.name for a in ATTACKS if a.norm == norm)


register_attack("ddn", "l2")(lambda ev: ddn(ev.ddn_steps, ev.ddn_init_epsilon))
register_attack("bb_l2", "l2")(lambda ev: brendel_bethge("l2", ev.bb_steps, ev.bb_lr))
register_attack("pgd_l2", "l2")(lambda ev: PGDBisection("l2", ev.pgd_eps_l2, ev.pgd_steps, ev.pgd_bisection_steps))
register_attack("cw_l2", "l2")(lambda ev: carlini_wagner(ev.cw_steps, ev.cw_binary_search_steps))
register_attack("fmn_linf", "linf")(lambda ev: fmn_linf(ev.fmn_steps))
register_attack("bb_linf", "linf")(lambda ev: brendel_bethge("linf", ev.bb_steps, ev.bb_lr))
register_attack("pgd_linf", "linf")(
    lambda ev: PGDBisection("linf", ev.pgd_eps_linf, ev.pgd_steps, ev.pgd_bisection_steps))


def build_attacks(norm: str, names: Sequence[str], cfg: Any) -> list[Attack]:
    """Attacks by name with the budgets of an EvalConfig (``cfg``)."""
    out = []
    for name in names:
        if name not in ATTACKS:
            raise ValueError(f"unknown attack {name!r}; choose from {sorted(ATTACKS.names())}")
        spec = ATTACKS.get(name, "attack")
        if spec.norm != norm:
            raise ValueError(f"attack {name!r} is an {spec.norm} attack, not {norm}")
        out.append(spec.build(cfg))
    return out


@dataclass
class NormResult:
    """Minimal perturbations of one norm for N images."""

    norm: str
    distances: Tensor
    """float64 N: 0 for clean misclassifications, inf where nothing was verified adversarial."""
    adversarials: Tensor
    """N x C x H x W: the best verified adversarial (the clean image where there is none)."""
    attack: list[str]
    """Per image: the attack whose candidate was kept, 'misclassified', or 'none'."""
    per_attack: dict[str, Tensor] = field(default_factory=dict)
    """Each attack's own verified distances (inf where it failed or did not run)."""
    seconds: dict[str, float] = field(default_factory=dict)
    """Wall time per attack (summed over batches)."""
    n_rejected: dict[str, int] = field(default_factory=dict)
    """Candidates an attack returned changed from the input that the model did not confirm."""
    errors: list[str] = field(default_factory=list)

    @property
    def total_seconds(self) -> float:
        return float(sum(self.seconds.values()))

    @property
    def broken(self) -> Tensor:
        return torch.isfinite(self.distances)

    @property
    def perturbations(self) -> Tensor:
        """adv - x per image (zeros where misclassified or unbroken; see ``broken``)."""
        return self.adversarials - self._x

    _x: Tensor = field(default=None, repr=False)


@torch.no_grad()
def verify(model: nn.Module, adv: Tensor, y: Tensor, batch_size: int = 256) -> Tensor:
    """True where the model, run again on the candidate, does not predict the label."""
    return predict(model, adv, batch_size, adv.device) != y.cpu()


def _update(res: NormResult, idx: Tensor, x: Tensor, y: Tensor, cand: Tensor, name: str, model: nn.Module) -> None:
    """Keep the verified candidates of ``idx`` (indices into the whole set) that are smaller."""
    cand = cand.detach().to(x.device).clamp(*BOUNDS)
    ok = verify(model, cand, y[idx])
    d = perturbation_norms(cand - x[idx], res.norm).cpu()
    d[~ok] = math.inf
    changed = (cand - x[idx]).reshape(len(idx), -1).abs().amax(dim=1).cpu() > 0
    res.n_rejected[name] = res.n_rejected.get(name, 0) + int((changed & ~ok).sum())
    mine = res.per_attack.setdefault(name, torch.full((len(res.distances),), math.inf, dtype=torch.float64))
    mine[idx] = torch.minimum(mine[idx], d)
    better = d < res.distances[idx]
    for j in better.nonzero().flatten().tolist():
        i = int(idx[j])
        res.distances[i] = d[j]
        res.adversarials[i] = cand[j].to(res.adversarials.device)
        res.attack[i] = name


def minimal_perturbations(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    attacks: dict[str, list[Attack]],
    batch_size: int = 100,
    cross_norm: bool = True,
    seed: int = 0,
    show_progress: bool = True,
) -> tuple[dict[str, NormResult], dict[str, int]]:
    """Run the attack sequence of every norm on (x, y); returns results and invariant checks.

    ``attacks``: norm -> attacks in order (refiners start from the best verified point so far).
    The invariant L2 / sqrt(D) <= Linf <= L2 is checked per image on the per-norm results
    before cross-norm pooling (``n_invariant_violations``) and after it (``..._final``).
    """
    model.eval()
    y = y.to(x.device)
    n = len(x)
    results = {
        norm: NormResult(
            norm=norm,
            distances=torch.full((n,), math.inf, dtype=torch.float64),
            adversarials=x.detach().clone(),
            attack=["none"] * n,
            _x=x,
        )
        for norm in attacks
    }
    clean_ok = ~verify(model, x, y)  # correct on the clean image
    for res in results.values():
        res.distances[~clean_ok] = 0.0
        for i in (~clean_ok).nonzero().flatten().tolist():
            res.attack[i] = "misclassified"

    todo_all = clean_ok.nonzero().flatten()
    batches = [todo_all[b : b + batch_size] for b in range(0, len(todo_all), batch_size)]
    jobs = [(norm, a) for norm, seq in attacks.items() for a in seq]
    # Attacks draw random directions (DDN for zero gradients, ...): fix the stream, keep the caller's.
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        np_state = np.random.get_state()
        np.random.seed(seed % 2**32)
        try:
            steps = [(idx, norm, attack) for idx in batches for norm, attack in jobs]
            for idx, norm, attack in progress(steps, "attacks", enabled=show_progress):
                res = results[norm]
                run_idx = idx
                start = None
                if attack.needs_start:
                    run_idx = idx[torch.isfinite(res.distances[idx])]
                    if len(run_idx) == 0:
                        continue
                    start = res.adversarials[run_idx].to(x.device)
                t0 = time.perf_counter()
                try:
                    cand = attack.run(model, x[run_idx], y[run_idx], starting_points=start)
                except (RuntimeError, AssertionError, ValueError) as e:
                    # An attack that breaks on some model (e.g. no gradient) must not sink the suite.
                    res.errors.append(f"{attack.name}: {type(e).__name__}: {e}")
                    warnings.warn(f"attack {attack.name} failed: {e}", stacklevel=2)
                    res.seconds[attack.name] = res.seconds.get(attack.name, 0.0) + time.perf_counter() - t0
                    continue
                res.seconds[attack.name] = res.seconds.get(attack.name, 0.0) + time.perf_counter() - t0
                _update(res, run_idx, x, y, cand, attack.name, model)
        finally:
            np.random.set_state(np_state)

    checks = {"n_invariant_violations": invariant_violations(results, x.shape[1:].numel())}
    if cross_norm and len(results) > 1:
        for norm, res in results.items():
            for other, ores in results.items():
                if other == norm:
                    continue
                idx = (torch.isfinite(ores.distances) & (ores.distances > 0)).nonzero().flatten()
                if len(idx):
                    before = list(res.attack)
                    _update(res, idx, x, y, ores.adversarials[idx], f"from_{other}", model)
                    # name the origin attack too, e.g. "ddn (from_l2)"
                    for i in idx.tolist():
                        if res.attack[i] == f"from_{other}" and before[i] != res.attack[i]:
                            res.attack[i] = f"{ores.attack[i]} (from_{other})"
    checks["n_invariant_violations_final"] = invariant_violations(results, x.shape[1:].numel())
    return results, checks


def invariant_violations(results: dict[str, NormResult], dim: int, rtol: float = 1e-6) -> int:
    """Images whose L2 and Linf minima break L2 / sqrt(D) <= Linf <= L2 (both finite)."""
    if "l2" not in results or "linf" not in results:
        return 0
    l2, linf = results["l2"].distances, results["linf"].distances
    both = torch.isfinite(l2) & torch.isfinite(linf)
    bad = (l2 / math.sqrt(dim) > linf * (1 + rtol) + 1e-12) | (linf > l2 * (1 + rtol) + 1e-12)
    return int((bad & both).sum())


def quantile(d: np.ndarray, p: float) -> float:
    """numpy's linear quantile, except that a neighbour at +inf makes the result +inf (not NaN)."""
    if len(d) == 0:
        return math.nan
    s = np.sort(np.asarray(d, dtype=np.float64))
    pos = p * (len(s) - 1)
    lo, hi = int(math.floor(pos)), int(math.ceil(pos))
    frac = pos - lo
    if frac == 0 or s[lo] == s[hi]:
        return float(s[lo])
    if math.isinf(s[hi]):
        return math.inf
    return float(s[lo] + (s[hi] - s[lo]) * frac)


def summarize(res: NormResult) -> dict:
    """Summary record of one norm: median, quartiles, success rate, timings."""
    d = res.distances.numpy()
    n = len(d)
    finite = d[np.isfinite(d)]
    q = [quantile(d, p) for p in (0.25, 0.5, 0.75)]
    return {
        "norm": res.norm,
        "median": float(q[1]),
        "q25": float(q[0]),
        "q75": float(q[2]),
        "mean_finite": float(finite.mean()) if len(finite) else math.nan,
        "success_rate": float(len(finite) / n) if n else math.nan,
        "n": n,
        "n_unbroken": int(n - len(finite)),
        "n_misclassified": int((d == 0).sum()),
        "seconds": res.total_seconds,
        "seconds_per_image": res.total_seconds / n if n else math.nan,
        "attacks": ",".join(res.seconds),
        "n_rejected": int(sum(res.n_rejected.values())),
        "errors": "; ".join(res.errors),
    }


def per_image_records(res: NormResult, image_index: Tensor, labels: Tensor) -> list[dict]:
    """One record per image: norm, image (index into the test set), label, distance, attack."""
    return [
        {
            "norm": res.norm,
            "image": int(i),
            "label": int(lab),
            "distance": float(d),
            "attack": a,
        }
        for i, lab, d, a in zip(image_index.tolist(), labels.tolist(), res.distances.tolist(), res.attack, strict=True)
    ]
