"""Adversarial attacks in [0, 1] pixel space: pure functions ``(model, x, y, ...) -> x_adv``.

One module per family: ``attacks.pgd`` (PGD/FGSM steps, the evaluation PGD-20 and
transfer PGD), ``attacks.autoattack`` (the reference AutoAttack, pyautoattack:
standard, plus and rand versions), ``attacks.randomized`` (attacks on a random switch of known members:
exact EOT-PGD, ensemble PGD, ARC). Each family registers its attacks in its own
registry. Importing the package imports nothing heavy; import the module you need.
"""
