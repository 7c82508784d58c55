"""The task-generic trainer: state, step, optimisers, sharding, checkpoints, logging."""
