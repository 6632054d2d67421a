"""Training: the trainer (one optimizer step), its EMA, the speed switches, checkpoints,
preemption and distribution over processes."""
