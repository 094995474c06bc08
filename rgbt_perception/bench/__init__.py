"""rgbt-bench: the cost of the bare network, the inference engine and the node, measured together.

``settings`` (options), ``stats`` (summaries, interleaving), ``runners`` (inputs, forward pass),
``round_trip`` (the node over DDS), ``measure`` (the measurements), ``render`` (report),
``run`` (one run), ``model_report`` (parameter counts and CPU forward time per variant).
"""
