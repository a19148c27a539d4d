"""Running averages and top-k accuracy (percentages, 0-100)."""
import torch


def correct_topk(logits, y, ks=(1, 5)):
    """Number of examples whose label is in the top-k predictions, for each k."""
    maxk = min(max(ks), logits.size(1))
    pred = logits.topk(maxk, dim=1).indices
    hit = pred.eq(y.view(-1, 1))
    return [float(hit[:, :min(k, maxk)].any(dim=1).sum()) for k in ks]


class Meter:
    """Sums of loss and correct counts; ``.summary()`` gives averages in percent."""

    def __init__(self):
        self.n, self.loss, self.c1, self.c5 = 0, 0.0, 0.0, 0.0

    def update(self, logits, y, loss):
        with torch.no_grad():
            c1, c5 = correct_topk(logits.float(), y)
        b = y.size(0)
        self.n += b
        self.loss += float(loss) * b
        self.c1 += c1
        self.c5 += c5

    def totals(self):
        return [float(self.n), self.loss, self.c1, self.c5]

    @staticmethod
    def from_totals(t):
        m = Meter()
        m.n, m.loss, m.c1, m.c5 = int(t[0]), t[1], t[2], t[3]
        return m

    def summary(self):
        n = max(1, self.n)
        return {"loss": self.loss / n, "acc1": 100.0 * self.c1 / n, "acc5": 100.0 * self.c5 / n, "n": self.n}
