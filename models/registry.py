"""The model registry; architecture modules register into it when imported."""
from utils.registry import Registry

MODELS = Registry("architecture")
