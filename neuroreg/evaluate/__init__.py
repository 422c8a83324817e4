"""Robustness evaluation: clean, noise, minimal adversarial distances, transfer, boundary,
corruptions, frequency. ``neuroreg.evaluate.runner.evaluate_model`` runs the suites of a
config and writes records; each suite is declared in ``neuroreg.evaluate.suites``."""
