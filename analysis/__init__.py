"""Analysis of sweeps: Parquet tables (gather), queries, plots, statistics and reports.

See analysis/README.md and analysis/SCHEMA.md.
"""
