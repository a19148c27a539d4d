"""Evaluation: natural and adversarial accuracy, validation and model selection during a run,
transfer matrices, R2S under transfer and adaptive attacks. Imports only downward (attacks,
models, data, utils); training (``trainers``) calls into it, never the other way round."""
