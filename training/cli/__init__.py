"""Console scripts of the training package (rgbt-synth, rgbt-train, rgbt-eval, ...)."""
