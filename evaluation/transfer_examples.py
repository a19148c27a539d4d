"""Transfer examples from a source ticket and which targets they fool: the one place both the
transfer matrix (``evaluation.transfer``) and R2S's transfer rows (``evaluation.r2s_eval``) get
them from, so the two report the same examples.

One PGD-20 trajectory per source and batch (step ``--eval_step``, 2/255 by default, one random start; the starts come
from torch's RNG seeded with ``seed`` once per source, batches in loader order) gives two
candidates per example:

* ``paper``: where the original's early-stopped PGD-20 leaves it (the first iterate the
  source misclassifies, else the last);
* ``highest_loss``: the iterate with the highest source cross-entropy (start and last included).

Protocols scored from them, per target and example: ``paper`` is the paper candidate;
``strong`` is the worse of the two candidates for that target (an example counts as
correct only if the target classifies both correctly), so strong <= paper in every cell
by construction.
"""
import torch
import torch.nn.functional as F
from tqdm import tqdm

from attacks.pgd import input_gradient, random_start, sign_step

PGD_STEP, PGD_ITERS = 2 / 255, 20  # the evaluation PGD-20 (attacks.pgd.pgd20), [0, 1] units
CANDIDATES = ("paper", "highest_loss")


def paper_and_strong(source, x, y, epsilon, step=PGD_STEP, iters=PGD_ITERS):
    """(paper, highest-loss) transfer examples from ONE PGD trajectory on ``source`` (radii in [0, 1]).

    paper: where the original's early-stopped PGD-20 (``attacks.pgd.pgd20``) leaves each
    example. highest loss: ``attacks.pgd.pgd_transfer``'s iterate. Early stop only freezes
    examples, so until an example is frozen both attacks take the same steps from the
    same random start: one trajectory, one random draw, gives both (tests check equality
    with the two functions), at the cost of the no-early-stop attack alone.
    """
    shape = (-1,) + (1,) * (x.dim() - 1)
    delta = random_start(x, epsilon)
    paper, frozen = delta, torch.zeros(len(y), dtype=torch.bool, device=x.device)
    strong, strong_loss = delta, None
    for _ in range(iters):
        grad, logits = input_gradient(source, x, delta, y)
        wrong = logits.argmax(1) != y
        paper = torch.where((wrong & ~frozen).view(shape), delta, paper)
        frozen |= wrong
        strong, strong_loss = keep_higher(delta, logits, y, strong, strong_loss)
        delta = sign_step(x, delta, grad, step, epsilon)
    with torch.no_grad():
        strong, _ = keep_higher(delta, source(x + delta), y, strong, strong_loss)
    paper = torch.where(frozen.view(shape), paper, delta)
    return (x + paper).detach(), (x + strong).detach()


def keep_higher(delta, logits, y, best, best_loss):
    """Per example the perturbation with the higher source cross-entropy (ties: the later one)."""
    loss = F.cross_entropy(logits.float(), y, reduction="none")
    if best_loss is None:
        return delta, loss
    better = (loss >= best_loss).view(-1, *[1] * (delta.dim() - 1))
    return torch.where(better, delta, best), torch.max(loss, best_loss)


def source_correctness(source, targets, loader, device, epsilon, seed, examples=paper_and_strong, progress=False,
                       desc="transfer", step=PGD_STEP):
    """{candidate: bool [targets, examples]}: whether each target classifies each candidate
    correctly (candidates of ``examples(source, x, y, epsilon, step=step)``, see the module
    docstring; radii and step in [0, 1] units). The caller's RNG state is kept; ``progress``:
    a tqdm bar per batch on stderr."""
    out = {c: [] for c in CANDIDATES}
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for x, y in tqdm(loader, desc=desc, leave=False, disable=not progress):
            x, y = x.to(device), y.to(device)
            for name, x_adv in zip(CANDIDATES, examples(source, x, y, epsilon, step=step)):
                with torch.no_grad():
                    out[name].append(torch.stack([t(x_adv).argmax(1) == y for t in targets]).cpu())
    return {c: torch.cat(v, 1) if v else torch.zeros(len(targets), 0, dtype=torch.bool) for c, v in out.items()}


def protocol_correctness(correct):
    """{protocol: bool [targets, examples]}: ``paper`` and ``strong`` (the worse candidate per target)."""
    return {"strong": correct["paper"] & correct["highest_loss"], "paper": correct["paper"]}


def accuracy_row(correct):
    """Top-1 (%) per target from a bool [targets, examples] matrix."""
    n = correct.shape[1]
    return (100.0 * correct.double().sum(1) / max(1, n)).tolist()
