"""The two fidelities every objective and estimator offers (docs/objectives.md, "Fidelity").

``paper``: the method as the paper defines it (mean-reduced losses, attacks in eval mode, Eq. 3's
maximisation, ...). ``faithful``: what the authors' code (github yangarbiter/robust-local-lipschitz)
computes, including its departures from the paper (sum-reduced losses, the Lipschitz step 0.003, ...),
so that the table presets can reproduce the published numbers.
"""

FIDELITIES = ("paper", "faithful")
