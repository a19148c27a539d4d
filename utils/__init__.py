"""Shared helpers: configuration, registries, errors, checkpoints, attacks, logging."""
