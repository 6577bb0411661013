"""The foundation every part of robustlip may import: one-line errors and value checks, the atomic
file writer, the fidelity and its implications, stop requests by signal, and the metric names of
results.json.

Nothing here imports another robustlip package, nor torch, Lightning or Hydra, so the
science (attacks, objectives, metrics, theory) and the glue (runs, callbacks, the commands) stand on
it alike. docs/architecture.md draws the floors.
"""
