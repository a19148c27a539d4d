"""An attack that records what it ran, for the protocol written next to its numbers.

``Recorded(fn, **kwargs)`` is the callable ``(model, x, y) -> x_adv`` of
``fn(model, x, y, **kwargs)``; every call appends the arguments the function got (its
own defaults included, read off its signature when called, never copied into a
table) and the model's member count and randomness at that moment. ``protocol()``
returns them, so a results file states the step, steps and samples of the calls that
were made (``evaluation.r2s_eval``).
"""
import inspect

from attacks.pgd import is_randomized
from attacks.randomized import members

NOT_SETTINGS = ("model", "x", "y")


class Recorded:
    """``fn`` with fixed keyword arguments; ``runs``: the settings of every call (see module docstring)."""

    def __init__(self, fn, **kwargs):
        self.fn, self.kwargs, self.runs = fn, kwargs, []
        self.__name__ = getattr(fn, "__name__", type(fn).__name__)

    def __call__(self, model, x, y):
        views = members(model)
        self.runs.append(dict(self.arguments(model, x, y), members=len(views) if views else None,
                              randomized=is_randomized(model)))
        return self.fn(model, x, y, **self.kwargs)

    def arguments(self, model, x, y):
        """{parameter: value} of the call ``fn(model, x, y, **kwargs)``, defaults included."""
        signature = inspect.signature(self.fn)
        bound = signature.bind(model, x, y, **self.kwargs)
        bound.apply_defaults()
        out = {}
        for name, value in bound.arguments.items():
            kind = signature.parameters[name].kind
            if kind == inspect.Parameter.VAR_KEYWORD:
                out.update(value)
            elif kind != inspect.Parameter.VAR_POSITIONAL and name not in NOT_SETTINGS:
                out[name] = value
        return out

    def protocol(self):
        """The settings of the first call ({} before any), with every call's when they differ."""
        if not self.runs:
            return {}
        out = dict(self.runs[0])
        if any(r != self.runs[0] for r in self.runs):
            out["per_call"] = list(self.runs)
        return out
