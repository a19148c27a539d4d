"""Attacks on the random switch (attacks.randomized) against an R2S model of trained tickets."""
import pytest
import torch

from attacks.pgd import is_randomized, random_start
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


class LinearSwitch(torch.nn.Module):
    """A random switch over three fixed linear two-class members (a finite member set, as R2S
    exposes it). Every member gets the clean point 0.5 slightly wrong (logit margin -0.01)."""

    random_forward = True

    def __init__(self):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.views = torch.nn.ModuleList()
        for _ in range(3):
            layer = torch.nn.Linear(16, 2)
            with torch.no_grad():
                layer.weight.copy_(torch.stack([torch.randint(0, 2, (16,), generator=gen) * 2.0 - 1, torch.zeros(16)]))
                # logit 0 at x = 0.5 everywhere: w . (x - 0.5) - 0.01
                layer.bias.copy_(torch.stack([-0.01 - 0.5 * layer.weight[0].sum(), torch.tensor(0.0)]))
            self.views.append(torch.nn.Sequential(torch.nn.Flatten(), layer))
        self.num_members = 3

    def member(self, j):
        return self.views[j]

    def forward(self, x):
        return self.member(int(torch.randint(0, 3, ())))(x)


def test_arc_compares_against_its_start_not_the_clean_point():
    """Clean points every member gets wrong, random starts some members get right: ARC must
    work from the start (the expected accuracy of each such start falls), not stop at once
    because the clean point's expected accuracy (0) cannot fall."""
    model = LinearSwitch()
    x, y = torch.full((16, 1, 4, 4), 0.5), torch.zeros(16, dtype=torch.long)
    assert float(expected_correct(model, x, y).max()) == 0.0
    torch.manual_seed(0)
    start = x + random_start(x, 8 / 255)
    ok_start = expected_correct(model, start, y)
    assert (ok_start > 0).sum() >= 4, "the fixture: some random starts must be partly correct"
    torch.manual_seed(0)
    ok = expected_correct(model, RANDOMIZED_ATTACKS.get("arc")(model, x, y, 8 / 255, iters=5), y)
    assert (ok <= ok_start).all()
    assert float((ok[ok_start > 0] < ok_start[ok_start > 0]).double().mean()) >= 0.75, (ok, ok_start)
