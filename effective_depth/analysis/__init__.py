"""The analysis layer: estimates made from stored measurements.

``estimation`` binds every registered estimator once and makes the run-level bootstrap estimates,
the per-prompt depths and the sample rules comparisons resample; ``depth`` adds the trend tests and
reliability warnings; ``per_prompt`` the per-prompt depths of a loaded run and the agreement
between estimators. Nothing here reads or writes files (that is ``effective_depth.store``).
"""
