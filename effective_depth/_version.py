"""The package version, in a module of its own so that any layer may read it without importing
the public API (``effective_depth/__init__.py``), which sits above every layer."""

__version__ = "0.1.0"
