"""Ray Tune sweeps over neuroreg runs: python -m sweep.run --space alpha_th.yaml (see sweep/README.md)."""
