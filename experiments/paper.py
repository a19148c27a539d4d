"""The paper's own numbers (CIFAR-10, PGD-20, eps 8/255; SPEC section 9), drawn
faintly on the cifar10 profile's figures. Values marked "≈" in the spec were read
from the paper's plots. Accuracies in percent; keys are our ``--arch`` names.
"""

DENSE = {"cResNet18": {"natural": 81.73, "robust": 50.19},
         "WideResNet32": {"natural": 85.93, "robust": 52.27}}
RST_ROBUST = {"cResNet18": {0.01: 37.6, 0.05: 46.0, 0.1: 47.0, 0.2: 47.7}}
RST_NATURAL = {"cResNet18": {0.1: 78.3, 0.2: 79.7}}
R2S = {"cResNet18": {"natural": 77.49, "transfer": 63.93},
       "WideResNet32": {"natural": 81.87, "transfer": 67.55}}
TRANSFER = {"offdiag": (60.0, 74.0), "diag": (44.0, 48.0)}
SOURCE = "paper (SPEC section 9; ≈ values read from its plots)"
