"""Attack bounds, early stopping, restarts and strength."""
import functools

import pytest
import torch

from trainers.train import make_train_attack
from attacks.pgd import ATTACKS, fgsm, fgsm_rs, pgd, pgd20
from tests.helpers import tiny_cfg, tiny_model, train_natural

EPS = 8 / 255


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


def test_restarts_keep_highest_loss(trained, digits_batch):
    x, y = digits_batch
    loss = functools.partial(torch.nn.functional.cross_entropy, reduction="none")
    torch.manual_seed(2)
    one = pgd(trained, x, y, EPS, 2 / 255, iters=2, restarts=1)
    torch.manual_seed(2)
    three = pgd(trained, x, y, EPS, 2 / 255, iters=2, restarts=3)
    with torch.no_grad():
        assert (loss(trained(three), y) >= loss(trained(one), y) - 1e-5).all()


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
