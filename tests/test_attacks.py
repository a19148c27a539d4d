"""Attack bounds, early stopping (and its compaction), restarts, strength, random models."""
import functools

import pytest
import torch

from trainers.train import make_train_attack
from attacks import pgd as attacks_pgd
from attacks.pgd import ATTACKS, fgsm, fgsm_rs, is_randomized, pgd, pgd20, random_start
from tests.helpers import tiny_cfg, tiny_model, train_natural

EPS = 8 / 255
STRENGTH_EPS = 3 / 255  # the trained fixture: PGD-20 ~50% robust, PGD-2 and FGSM ~90-100%


@pytest.fixture(scope="module")
def digits_batch():
    from data import build_dataset
    data = build_dataset(tiny_cfg("--set", "Digits"))
    xs, ys = zip(*[data.val[i] for i in range(96)])
    return torch.stack(xs), torch.tensor(ys)


@pytest.fixture(scope="module")
def trained(digits_batch):
    x, y = digits_batch
    model = tiny_model("--conv_type", "DenseConv")
    return train_natural(model, x, y, steps=40)


ATTACK_FNS = {
    "pgd": functools.partial(pgd, epsilon=EPS, step=2 / 255, iters=3),
    "fgsm": functools.partial(fgsm, epsilon=EPS, alpha=10 / 255),
    "fgsm-rs": functools.partial(fgsm_rs, epsilon=EPS),
    "pgd20": functools.partial(pgd20, epsilon=EPS),
}


@pytest.mark.parametrize("name", sorted(ATTACK_FNS))
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_attack_stays_in_ball_and_image_range(trained, digits_batch, name, mode):
    x, y = digits_batch
    trained.train(mode == "train")
    x_adv = ATTACK_FNS[name](trained, x, y)
    trained.eval()
    assert (x_adv - x).abs().max() <= EPS + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert not torch.equal(x_adv, x)
    assert all(p.grad is None for p in trained.parameters()), "attacks must not leave parameter grads"


def test_registry_lists_training_attacks():
    assert {"pgd", "fgsm", "fgsm-rs"} <= set(ATTACKS.names())


def test_pgd20_lowers_accuracy_of_trained_model(trained, digits_batch):
    x, y = digits_batch
    with torch.no_grad():
        natural = (trained(x).argmax(1) == y).float().mean()
    torch.manual_seed(0)
    x_adv = pgd20(trained, x, y, epsilon=EPS)
    with torch.no_grad():
        robust = (trained(x_adv).argmax(1) == y).float().mean()
    assert natural > 0.5, "the fixture should be a reasonable classifier"
    assert robust < natural - 0.1


def test_early_stop_leaves_misclassified_examples_at_their_start(trained, digits_batch):
    """With early stop, an example wrong at the random start is never moved."""
    x, y = digits_batch
    eps = 0.4  # large, so that the random start alone misclassifies some examples
    torch.manual_seed(1)
    start = pgd(trained, x, y, eps, 2 / 255, iters=0)
    torch.manual_seed(1)
    x_adv = pgd(trained, x, y, eps, 2 / 255, iters=5, early_stop=True)
    with torch.no_grad():
        wrong_at_start = trained(start).argmax(1) != y
    assert wrong_at_start.any() and (~wrong_at_start).any()
    assert torch.equal(x_adv[wrong_at_start], start[wrong_at_start])
    assert not torch.equal(x_adv[~wrong_at_start], start[~wrong_at_start])


class _TwoRegions(torch.nn.Module):
    """Ten logits that depend only on whether the input's first entry exceeds 0.5: above,
    class 1 wins narrowly (misclassified, cross-entropy ~1.3); below, class 0 wins by a
    hair over eight others (correct, but cross-entropy ~2.2, the higher loss)."""

    def forward(self, x):
        above = (x.flatten(1)[:, :1] > 0.5).float()
        wrong = torch.tensor([0.0, 0.3] + [-1.0] * 8)
        right = torch.tensor([0.01] + [0.0] * 9)
        return above * wrong + (1 - above) * right


def test_restarts_keep_a_misclassifying_iterate_before_a_higher_loss_one():
    """With iters=0 each restart is its random start; per example, any misclassifying start wins."""
    model, eps = _TwoRegions(), 0.1
    x, y = torch.full((64, 1, 1, 1), 0.5), torch.zeros(64, dtype=torch.long)
    torch.manual_seed(3)
    starts = [x + random_start(x, eps) for _ in range(3)]
    torch.manual_seed(3)
    out = pgd(model, x, y, eps, 2 / 255, iters=0, restarts=3)
    wrong = torch.stack([model(s).argmax(1) != 0 for s in starts])
    assert wrong.any(0).any() and (~wrong).any(0).any() and ((wrong.sum(0) > 0) & (wrong.sum(0) < 3)).any()
    assert torch.equal(model(out).argmax(1) != 0, wrong.any(0))
    # among restarts of equal outcome the highest loss is kept (ties: the later restart)
    loss = torch.stack([torch.nn.functional.cross_entropy(model(s), y, reduction="none") for s in starts])
    best = torch.where(wrong.any(0), torch.where(wrong, loss, -1.0).amax(0), loss.amax(0))
    assert torch.allclose(torch.nn.functional.cross_entropy(model(out), y, reduction="none"), best)


def test_compacted_early_stop_pgd_gives_exactly_the_uncompacted_examples(trained, digits_batch):
    """Compaction (the default) and the full-batch loop: same examples, bit for bit, on a
    batch where some examples stop early and some never do."""
    x, y = digits_batch[0][:32], digits_batch[1][:32]
    torch.manual_seed(4)
    full = pgd20(trained, x, y, STRENGTH_EPS, compact=False)
    torch.manual_seed(4)
    compact = pgd20(trained, x, y, STRENGTH_EPS, compact=True)
    assert torch.equal(full, compact)
    with torch.no_grad():
        robust = trained(full).argmax(1) == y
        natural = trained(x).argmax(1) == y
    assert (natural & ~robust).sum() >= 4 and robust.sum() >= 4, "the fixture must mix early stops and survivors"


def test_pgd20_beats_pgd2_and_fgsm(trained, digits_batch):
    """Attack strength pinned: at 3/255 PGD-20 leaves clearly fewer examples than 2 steps or FGSM."""
    x, y = digits_batch[0][:32], digits_batch[1][:32]

    def accuracy(x_adv):
        with torch.no_grad():
            return (trained(x_adv).argmax(1) == y).float().mean().item()

    torch.manual_seed(5)
    pgd_20 = accuracy(pgd20(trained, x, y, STRENGTH_EPS))
    torch.manual_seed(5)
    pgd_2 = accuracy(pgd(trained, x, y, STRENGTH_EPS, 2 / 255, iters=2, early_stop=True))
    one_step = accuracy(fgsm(trained, x, y, STRENGTH_EPS, STRENGTH_EPS))
    assert pgd_20 <= pgd_2 - 0.2 and pgd_20 <= one_step - 0.2, (pgd_20, pgd_2, one_step)


def test_random_models_are_attacked_without_early_stop(monkeypatch):
    """pgd20 on a model whose masks are sampled at every pass: no early stop (one draw says little)."""
    calls = []
    real = attacks_pgd.pgd
    monkeypatch.setattr(attacks_pgd, "pgd", lambda *a, **k: calls.append(k["early_stop"]) or real(*a, **k))
    x, y = torch.rand(2, 3, 32, 32), torch.tensor([0, 1])
    random_model = tiny_model("--conv_type", "SampleSubnetConv").eval()
    assert is_randomized(random_model) and not is_randomized(tiny_model().eval())
    pgd20(random_model, x, y, EPS, iters=1)
    pgd20(tiny_model().eval(), x, y, EPS, iters=1)
    assert calls == [False, True]


def test_fgsm_from_zero_is_deterministic(trained, digits_batch):
    x, y = digits_batch
    a = fgsm(trained, x, y, EPS, 10 / 255)
    b = fgsm(trained, x, y, EPS, 10 / 255)
    assert torch.equal(a, b)


def test_pgd_training_step_ignores_alpha():
    """The original uses 2/255 steps for pgd whatever --alpha says."""
    attack = make_train_attack(tiny_cfg("--attack_type", "pgd", "--alpha", "100", "--attack_iters", "3"))
    assert attack.keywords["step"] == pytest.approx(2 / 255) and attack.keywords["iters"] == 3
    assert make_train_attack(tiny_cfg()) is None
