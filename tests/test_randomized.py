"""Attacks on the random switch (attacks.randomized) against an R2S model of trained tickets."""
import pytest
import torch

from attacks.pgd import is_randomized
from attacks.randomized import RANDOMIZED_ATTACKS, expected_correct
from tests.test_r2s import TRAINED_KS, digits, r2s_of, shared_network, ticket_of

EPS = 2 / 255


@pytest.fixture(scope="module")
def switch():
    """An R2S model of three tickets of one trained tiny network, and 8 test digits."""
    x, network = shared_network()
    tickets = [(f"t_{k}.pth", k, ticket_of(network, k, x, seed=i)[1]) for i, k in enumerate(TRAINED_KS)]
    _, _, xv, yv = digits(n_train=1, n_val=8)
    return r2s_of(tickets).eval(), xv, yv


def test_the_switch_is_random_and_its_members_are_not(switch):
    r2s, _, _ = switch
    assert is_randomized(r2s) and not is_randomized(r2s.member(0))
    r2s.force_member(1)
    assert not is_randomized(r2s)
    r2s.force_member(None)


@pytest.mark.parametrize("name", ["eot_pgd", "ensemble_pgd", "arc"])
def test_adaptive_attacks_lower_the_expected_accuracy(switch, name):
    """Each full-knowledge attack takes a clear share of the switch's expected accuracy at
    2/255 in 3 steps (a wrong sign, a wrong member set or a broken acceptance rule would not)."""
    r2s, x, y = switch
    natural = float(expected_correct(r2s, x, y).mean())
    torch.manual_seed(0)
    x_adv = RANDOMIZED_ATTACKS.get(name)(r2s, x, y, EPS, iters=3)
    assert (x_adv - x).abs().max() <= EPS + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    assert natural >= 0.6, "the fixture should be a reasonable classifier"
    assert float(expected_correct(r2s, x_adv, y).mean()) <= natural - 0.2
