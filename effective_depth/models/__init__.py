"""Model loading (TransformerLens names, hub ids, local directories, the zoo) and the zoo itself."""

from .loading import BACKENDS, HOOKED_ARCHITECTURES, ResolvedSpec, load_model, resolve_spec
from .zoo import DEFAULT_ZOO_MODEL, ZooEntry, zoo_entries, zoo_entry, zoo_names

__all__ = [
    "BACKENDS",
    "HOOKED_ARCHITECTURES",
    "DEFAULT_ZOO_MODEL",
    "ResolvedSpec",
    "ZooEntry",
    "load_model",
    "resolve_spec",
    "zoo_entries",
    "zoo_entry",
    "zoo_names",
]
