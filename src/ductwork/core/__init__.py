"""The engine: graph, fingerprints, artifact store, run records, runner and executors.

Nothing here imports the CLI, the renderers, the stage kinds or any ML/AI library.
"""
