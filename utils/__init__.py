"""Shared helpers: configuration, registries, errors, checkpoints, run folders, logging, provenance."""
