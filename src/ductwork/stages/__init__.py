"""Stage kinds: one module per kind, listed in :mod:`ductwork.stages.registry`."""
