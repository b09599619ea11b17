"""The store layer: run directories and the tables over them.

``results`` (one run directory: JSON + safetensors, atomic writes, ``load_run``/``Run``),
``fingerprint`` (fingerprints of models and inputs), ``tables`` (the tidy rows of one run),
``frames`` (tidy tables of runs) and ``compare`` (comparisons across run directories; its
statistics come from ``effective_depth.analysis``).
"""
