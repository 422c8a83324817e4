"""Configuration of the robustness evaluation (the ``evaluation`` section of a run config).

Defaults follow METHOD.md section 2. Noise levels depend on the data set: models of
MNIST-scale digits barely notice Gaussian sigma 0.1, so their grid reaches further.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from neuroreg.errors import ConfigError
from neuroreg.evaluate.attacks import NORMS, attack_names
from neuroreg.evaluate.corruptions import CORRUPTIONS
from neuroreg.evaluate.noise import NOISE_TYPES
from neuroreg.evaluate.suites import suite_names
from neuroreg.limits import check_bound

# Data sets whose images are digits / clothing on a flat background (1 channel, 28 px).
DIGIT_DATASETS = ("digits", "mnist", "fashion_mnist")

# METHOD.md: sigma 0 ... 0.1 in the CIFAR papers, larger for MNIST.
CIFAR_NOISE_LEVELS: dict[str, list[float]] = {
    "gaussian": [0.0, 0.02, 0.04, 0.06, 0.08, 0.1],
    "uniform": [0.0, 0.04, 0.08, 0.12, 0.16, 0.2],
    "salt_pepper": [0.0, 0.01, 0.02, 0.05, 0.1, 0.2],
}
DIGIT_NOISE_LEVELS: dict[str, list[float]] = {
    "gaussian": [0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.7, 1.0],
    "uniform": [0.0, 0.1, 0.2, 0.3, 0.4, 0.6, 0.8, 1.0],
    "salt_pepper": [0.0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5],
}


def default_noise_levels(dataset: str) -> dict[str, list[float]]:
    """The noise grid of a data set when ``evaluation.noise_levels`` is not given."""
    src = DIGIT_NOISE_LEVELS if dataset in DIGIT_DATASETS else CIFAR_NOISE_LEVELS
    return {k: list(v) for k, v in src.items()}


@dataclass
class EvalConfig:
    suites: list[str] = field(default_factory=lambda: ["clean", "noise"])
    """Which suites run at the end of training: clean, noise, adversarial, transfer,
    boundary, corruptions, frequency (its perturbation spectra need adversarial too)."""
    n_images: int = 1000
    """Test images for the attack suites (a deterministic subset)."""
    seed: int = 0
    """Seed of the image subsets, the noise, the corruptions and the attacks' randomness."""
    batch_size: int = 256
    """Images per forward pass for accuracy suites (attacks use attack_batch_size)."""
    progress: bool = True
    """tqdm progress bars on stderr (shown only when stderr is a terminal)."""

    # --- noise ---------------------------------------------------------------
    noise_types: list[str] = field(default_factory=lambda: list(NOISE_TYPES))
    """gaussian (sigma), uniform (+-eps), salt_pepper (probability p of a pixel flipping to 0 or 1)."""
    noise_levels: dict[str, list[float]] | None = None
    """Levels per noise type; None = the data set's default (larger for digits, see config.py)."""
    noise_n_images: int | None = None
    """Test images for the noise suite; None = the whole test set."""

    # --- minimal adversarial perturbation ---------------------------------------
    norms: list[str] = field(default_factory=lambda: list(NORMS))
    """Norms of the minimal-perturbation suite: l2, linf."""
    attacks_l2: list[str] = field(default_factory=lambda: ["ddn", "bb_l2"])
    """L2 attacks in order; bb_l2 refines the best adversarials found before it.
    Options: ddn, bb_l2, pgd_l2 (epsilon grid + bisection), cw_l2 (Carlini-Wagner)."""
    attacks_linf: list[str] = field(default_factory=lambda: ["fmn_linf", "bb_linf"])
    """Linf attacks in order; bb_linf refines. Options: fmn_linf, bb_linf, pgd_linf."""
    attack_batch_size: int = 100
    """Images per attack call."""
    ddn_steps: int = 200
    ddn_init_epsilon: float = 1.0
    fmn_steps: int = 200
    bb_steps: int = 200
    """Brendel-Bethge iterations (Foolbox default 1000; it converges within ~100-200 on small nets)."""
    bb_lr: float = 1e-3
    pgd_steps: int = 40
    """PGD iterations per epsilon."""
    pgd_eps_l2: list[float] = field(default_factory=lambda: [0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4])
    pgd_eps_linf: list[float] = field(default_factory=lambda: [0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256])
    pgd_bisection_steps: int = 6
    """Bisection steps between the last failing and the first successful grid epsilon."""
    cw_steps: int = 200
    cw_binary_search_steps: int = 6
    cross_norm: bool = True
    """Let an adversarial found for one norm bound the other norm's distance too (each is verified)."""

    # --- transferred FGSM -------------------------------------------------------
    transfer_epsilons: list[float] = field(default_factory=lambda: [0.0, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16])
    """Linf budgets of FGSM computed on the surrogate."""
    surrogate: str | None = None
    """Checkpoint of the surrogate (e.g. the unregularised baseline of the same seed)."""

    # --- decision-based boundary attack ---------------------------------------------
    boundary_n_images: int = 50
    boundary_attack: str = "boundary"
    """boundary: Foolbox BoundaryAttack (Brendel et al. 2018, as Li et al. 2023; minimises L2);
    hsj_linf: HopSkipJump with its Linf constraint (fewer model calls for the same Linf)."""
    boundary_steps: int = 5000
    """Iterations of the decision-based attack (BoundaryAttack: steps; HopSkipJump: ~40-64 suffice)."""
    boundary_budgets: list[float] = field(default_factory=lambda: [0.01, 0.02, 0.03, 0.05, 0.08, 0.1, 0.15, 0.2])
    """Linf budgets at which the success rate is reported."""

    # --- corruptions -------------------------------------------------------------
    corruptions: list[str] | None = None
    """Corruption names (neuroreg.evaluate.corruptions.CORRUPTIONS); None = all 15."""
    severities: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5])
    corruption_n_images: int | None = 2000
    """Test images for the corruption suite; None = the whole test set."""

    # --- frequency (read by neuroreg.evaluate.frequency) ---------------------------
    frequency_cs: list[float] | None = None
    """Mixing frequencies of hybrid images as fractions of Nyquist; None = 0, 0.05, ..., 1."""
    hybrid_pairs: int = 1000
    spectrum_bins: int = 25

    def levels_for(self, dataset: str) -> dict[str, list[float]]:
        """Noise levels per selected type (the configured grid or the data set's default)."""
        levels = self.noise_levels if self.noise_levels is not None else default_noise_levels(dataset)
        return {t: [float(v) for v in levels[t]] for t in self.noise_types}

    def validate(self, prefix: str = "evaluation") -> None:
        def err(name: str, msg: str) -> ConfigError:
            return ConfigError(f"{prefix}.{name}", msg)

        for s in self.suites:
            if s not in suite_names():
                raise err("suites", f"unknown suite {s!r}; choose from {suite_names()}")
        for name in ("n_images", "batch_size", "attack_batch_size", "ddn_steps", "fmn_steps", "bb_steps",
                     "pgd_steps", "cw_steps", "cw_binary_search_steps", "boundary_n_images",
                     "boundary_steps", "hybrid_pairs", "spectrum_bins"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise err(name, f"must be an integer >= 1, got {v!r}")
        for name in ("noise_n_images", "corruption_n_images"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                raise err(name, f"must be an integer >= 1 or null (all test images), got {v!r}")
        for key, names in _BOUNDED.items():
            for name in names:
                check_bound(getattr(self, name), f"evaluation.{key}", f"{prefix}.{name}")
        for name in ("pgd_eps_l2", "pgd_eps_linf", "boundary_budgets", "transfer_epsilons", "frequency_cs",
                     "severities", "noise_types", "norms", "attacks_l2", "attacks_linf", "suites", "corruptions"):
            check_bound(len(getattr(self, name) or []), "evaluation.list", f"{prefix}.{name}")
        for t, levels in (self.noise_levels or {}).items():
            if isinstance(levels, (list, tuple)):
                check_bound(len(levels), "evaluation.list", f"{prefix}.noise_levels.{t}")
        for name in ("transfer_epsilons", "frequency_cs"):
            for v in getattr(self, name) or []:
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                    raise err(name, f"values must be finite numbers, got {v!r}")
        if self.boundary_attack not in ("boundary", "hsj_linf"):
            raise err("boundary_attack", f"must be 'boundary' or 'hsj_linf', got {self.boundary_attack!r}")
        if self.pgd_bisection_steps < 0:
            raise err("pgd_bisection_steps", "must be >= 0")
        for name in ("ddn_init_epsilon", "bb_lr"):
            v = getattr(self, name)
            if not (v > 0 and math.isfinite(v)):
                raise err(name, f"must be a finite number > 0, got {v!r}")

        for t in self.noise_types:
            if t not in NOISE_TYPES:
                raise err("noise_types", f"unknown noise {t!r}; choose from {NOISE_TYPES}")
        if self.noise_levels is not None:
            for t in self.noise_types:
                if t not in self.noise_levels:
                    raise err("noise_levels", f"no levels for {t!r}; give a list per type in noise_types "
                              "or null for the data set's defaults")
            for t, levels in self.noise_levels.items():
                if t not in NOISE_TYPES:
                    raise err("noise_levels", f"unknown noise {t!r}; choose from {NOISE_TYPES}")
                if not isinstance(levels, (list, tuple)) or not levels:
                    raise err(f"noise_levels.{t}", "must be a non-empty list of levels")
                for v in levels:
                    if isinstance(v, bool) or not isinstance(v, (int, float)) or not (0 <= v < math.inf):
                        raise err(f"noise_levels.{t}", f"levels must be finite numbers >= 0, got {v!r}")
                if t == "salt_pepper" and max(levels) > 1:
                    raise err("noise_levels.salt_pepper", "probabilities must lie in [0, 1]")

        for n in self.norms:
            if n not in NORMS:
                raise err("norms", f"unknown norm {n!r}; choose from {NORMS}")
        for norm, names in (("l2", self.attacks_l2), ("linf", self.attacks_linf)):
            for a in names:
                if a not in attack_names(norm):
                    raise err(f"attacks_{norm}", f"unknown {norm} attack {a!r}; choose from {attack_names(norm)}")
            if norm in self.norms and "adversarial" in self.suites and not names:
                raise err(f"attacks_{norm}", f"name at least one attack, or drop {norm!r} from norms")
        for name in ("pgd_eps_l2", "pgd_eps_linf", "boundary_budgets"):
            _increasing_positive(getattr(self, name), f"{prefix}.{name}")
        eps = self.transfer_epsilons
        if not eps or any(e < 0 for e in eps):
            raise err("transfer_epsilons", "must be a non-empty list of numbers >= 0")

        for c in self.corruptions or []:
            if c not in CORRUPTIONS:
                raise err("corruptions", f"unknown corruption {c!r}; choose from {sorted(CORRUPTIONS)}")
        for s in self.severities:
            if s not in (1, 2, 3, 4, 5):
                raise err("severities", f"severity must be 1 ... 5, got {s!r}")


_BOUNDED = {
    "images": ("n_images", "noise_n_images", "corruption_n_images", "boundary_n_images", "hybrid_pairs"),
    "batch": ("batch_size", "attack_batch_size"),
    "steps": ("ddn_steps", "fmn_steps", "bb_steps", "pgd_steps", "cw_steps", "boundary_steps"),
    "search": ("pgd_bisection_steps", "cw_binary_search_steps"),
    "bins": ("spectrum_bins",),
}
"""Upper bounds (``neuroreg.limits``) of the evaluation's sizes, by kind."""


def _increasing_positive(values: list[float], name: str) -> None:
    if not values:
        raise ConfigError(name, "must be a non-empty list")
    if any(not (0 < v < math.inf) for v in values) or any(b <= a for a, b in zip(values, values[1:])):
        raise ConfigError(name, f"must be finite, positive and strictly increasing, got {values[:20]}")
