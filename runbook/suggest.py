""""Did you mean": the one wording of a suggestion for a mistyped name (environment, playbook,
inventory key, revision, option).

difflib's ratio (the standard library, as git and click use it) is enough for names this short;
only a close match is suggested, never a guess for every typo.
"""

from __future__ import annotations

import difflib
from typing import Iterable


def close(word: str, candidates: Iterable[str], cutoff: float = 0.6) -> list[str]:
    """The candidates close to ``word``, best first (at most three)."""
    names = sorted({str(c) for c in candidates if c is not None and str(c) != word})
    found = difflib.get_close_matches(str(word), names, n=3, cutoff=cutoff)
    if not found:
        return []
    best = difflib.SequenceMatcher(None, word, found[0]).ratio()
    return [n for n in found if difflib.SequenceMatcher(None, word, n).ratio() >= best - 0.05]


def did_you_mean(word: str, candidates: Iterable[str], cutoff: float = 0.6) -> str:
    """``"; did you mean 'prod'?"`` (or ``'a' or 'b'``), or "" when nothing is close."""
    found = close(word, candidates, cutoff)
    if not found:
        return ""
    return "; did you mean " + " or ".join(f"'{name}'" for name in found) + "?"
