"""Training loops and training-only data: run state, label-grounded bootstrap, AudioSet labels."""
