"""A tiny name -> object registry, one per kind of component.

Registries drive CLI choices, error messages that list valid names and
parametrised tests. Registration happens at import of the defining module,
which only fills the registry object: no other side effect.
"""
import difflib

from utils.errors import UserError


class Registry:
    def __init__(self, kind):
        self.kind = kind
        self._items = {}

    def register(self, name=None):
        """Decorator: ``@REG.register()`` uses the object's ``__name__``."""
        def deco(obj):
            key = name or obj.__name__
            if key in self._items:
                raise ValueError(f"{self.kind} '{key}' registered twice")
            self._items[key] = obj
            return obj
        return deco

    def add(self, name, obj):
        self.register(name)(obj)

    def get(self, name):
        if name not in self._items:
            raise UserError(self.unknown_message(name))
        return self._items[name]

    def unknown_message(self, name):
        hint = difflib.get_close_matches(str(name), self.names(), n=1)
        hint = f" (did you mean '{hint[0]}'?)" if hint else ""
        return f"unknown {self.kind} '{name}'{hint}; valid: {', '.join(self.names())}"

    def names(self):
        return sorted(self._items)

    def __contains__(self, name):
        return name in self._items

    def __iter__(self):
        return iter(self.names())

    def __len__(self):
        return len(self._items)
