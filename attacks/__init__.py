"""Adversarial attacks in [0, 1] pixel space: pure functions ``(model, x, y, ...) -> x_adv``.

One module per family: ``attacks.pgd`` (PGD/FGSM steps and the evaluation PGD-20),
``attacks.autoattack`` (torchattacks' AutoAttack wrapper). Importing the package
imports nothing heavy; import the family module you need.
"""
