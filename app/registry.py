"""Registries: one explicit name -> entry dict per kind of name, kept once, in the module that owns the kind.

Archs, norms, loss terms, optimizers, schedules, precisions, weight averaging, class-weight schemes,
augmentation presets, samplers, overlap rules and TTA view sets each have one `Registry`. Recipe validation
(app/train/validate.py), the CLI's `--help` texts and the tests read their names from it, and an unknown name
fails with the closest valid ones (as timm's and smp's factories do). Adding a name is one entry in one file.
"""

import difflib
from collections.abc import Iterable, Iterator, Mapping
from typing import Generic, TypeVar

from app.errors import TrashError

T = TypeVar("T")


def closest(name: str, choices: Iterable[str], n: int = 3, cutoff: float = 0.6) -> list[str]:
    """Up to `n` of `choices` that look like `name` (difflib's ratio >= cutoff), best first."""
    return difflib.get_close_matches(str(name), list(choices), n=n, cutoff=cutoff)


def did_you_mean(name: str, choices: Iterable[str], prefix: str = "", cutoff: float = 0.6) -> str:
    """' (did you mean 'a' or 'b'?)' for the closest choices, or '' when none is close."""
    close = closest(name, choices, cutoff=cutoff)
    return f" (did you mean {' or '.join(repr(prefix + c) for c in close)}?)" if close else ""


class Registry(Mapping, Generic[T]):
    """An ordered, read-only name -> entry mapping whose failed lookups name the closest entries.

    Args:
        kind: What a name is, for messages ("arch", "loss term", "TTA view set").
        entries: Name -> entry, in the order `--help` and error messages list them.
        key: The recipe key that takes one of these names ("model.arch"), or "" when no recipe key does.
    """

    def __init__(self, kind: str, entries: dict[str, T], key: str = ""):
        self.kind, self.key, self._entries = kind, key, dict(entries)

    def __getitem__(self, name: str) -> T:
        if name not in self._entries:
            raise TrashError(self.unknown(name))
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def get(self, name: str, default=None):
        return self._entries.get(name, default)

    def names(self, sep: str = ", ") -> str:
        """The names joined, for messages and help texts."""
        return sep.join(self._entries)

    def unknown(self, name: str) -> str:
        """The message for a name that is not registered: where it was given, the closest names, all names."""
        where = f" in '{self.key}'" if self.key else ""
        close = did_you_mean(name, self, cutoff=0.4)  # registries are short: a loose match still helps
        return f"unknown {self.kind} {name!r}{where}{close}; choose one of {self.names()}"

    def problem(self, name: str) -> str | None:
        """`unknown(name)` when `name` is not registered, else None."""
        return None if name in self._entries else self.unknown(name)
