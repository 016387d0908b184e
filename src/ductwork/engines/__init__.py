"""Adapters to outside execution engines (Ray, Prefect), imported only when a run asks for one.

Each adapter is an :class:`~ductwork.core.executors.Executor`: the runner still walks the DAG,
decides from fingerprints what runs, and records everything; the engine only runs
:func:`~ductwork.core.execute.execute_stage` somewhere. ``ray`` and ``prefect`` are imported
inside the functions that need them, so ``ductwork`` works without them installed.
"""
