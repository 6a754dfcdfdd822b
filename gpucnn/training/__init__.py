"""Training: fit and its loops, the whole run (run(config)), its config, resume rules, checkpoints,
callbacks, what a run shows (progress, metrics, plots, TensorBoard)."""
