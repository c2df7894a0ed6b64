"""Blocklists: exact terms and regular expressions, and the built-in profanity list.

Terms match whole words, ignoring case and Unicode compatibility forms (NFKC, case-folded): "Badword" and
"ＢＡＤＷＯＲＤ" match the term "badword", "badwords" does not. All of a list's terms are one compiled
alternation, so a list of thousands costs about what a short one does. Regular expressions come from project
admins, so each runs under a time limit (the `regex` module's timeout): a pattern that backtracks
catastrophically is an error of that check, never a hung request.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

import regex

PATTERN_TIMEOUT_S = 0.05
MAX_PATTERN_LENGTH = 1000


class PatternError(ValueError):
    """A blocklist regular expression that does not compile, or is too long."""


@dataclass(frozen=True, slots=True)
class Hit:
    blocklist: str
    item: str      # the term or pattern that matched
    start: int
    end: int


def normalize(text: str) -> str:
    """NFKC and case folding that keep offsets: each character maps to exactly one (else left as it was)."""
    out = []
    for ch in text:
        folded = unicodedata.normalize("NFKC", ch).casefold()
        out.append(folded if len(folded) == 1 else ch.lower() if len(ch.lower()) == 1 else ch)
    return "".join(out)


def check_pattern(pattern: str) -> None:
    if len(pattern) > MAX_PATTERN_LENGTH:
        raise PatternError(f"A blocklist pattern may be at most {MAX_PATTERN_LENGTH} characters long.")
    try:
        regex.compile(pattern, regex.IGNORECASE)
    except regex.error as exc:
        raise PatternError(f"The pattern {pattern!r} is not a valid regular expression: {exc}.") from None


class Blocklist:
    def __init__(self, name: str, terms: list[str] = (), patterns: list[str] = (),
                 ids: dict[str, str] | None = None) -> None:
        self.name = name
        self.ids = ids or {}  # item (term or pattern) -> its id in the store, where it came from there
        self.terms = [t for t in dict.fromkeys(normalize(t.strip()) for t in terms) if t]
        for p in patterns:
            check_pattern(p)
        self.patterns = [(p, regex.compile(p, regex.IGNORECASE)) for p in patterns]
        alternation = "|".join(regex.escape(t) for t in sorted(self.terms, key=len, reverse=True))
        self._terms = regex.compile(rf"(?<!\w)(?:{alternation})(?!\w)") if self.terms else None
        self._originals = {normalize(t.strip()): t.strip() for t in terms}

    def find(self, text: str, normalized: str | None = None) -> list[Hit]:
        """Every match in `text`. Raises TimeoutError when a pattern runs past its time limit."""
        hits = []
        if self._terms is not None:
            folded = normalized if normalized is not None else normalize(text)
            for m in self._terms.finditer(folded, timeout=PATTERN_TIMEOUT_S):
                hits.append(Hit(self.name, self._originals.get(m.group(0), m.group(0)), m.start(), m.end()))
        for source, pattern in self.patterns:
            for m in pattern.finditer(text, timeout=PATTERN_TIMEOUT_S):
                if m.end() > m.start():
                    hits.append(Hit(self.name, source, m.start(), m.end()))
        return hits


# The built-in profanity list: common English profanity and slurs' most frequent forms, as whole words.
# Deliberately short and unambiguous (no "hell", "damn", "crap": over-blocking counts as much as missing).
_PROFANITY = (
    "fuck fucks fucked fucker fuckers fucking motherfucker motherfuckers motherfucking shit shits shitty bullshit "
    "asshole assholes bitch bitches bastard bastards cunt cunts dick dickhead dickheads pussy wanker wankers "
    "twat twats prick pricks slut sluts whore whores cocksucker cocksuckers dipshit jackass"
).split()


def profanity() -> Blocklist:
    return Blocklist("profanity", _PROFANITY)
