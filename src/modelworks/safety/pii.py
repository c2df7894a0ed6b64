"""Personal data and secrets in text: where they are, checked beyond their shape, and how to redact them.

Every kind is a pattern for candidates plus a check that rejects look-alikes: payment cards pass the Luhn check
and a known network prefix, IBANs their ISO 13616 mod-97 checksum and their country's length, US social security
numbers the SSA's rules (no area 000, 666 or 9xx, no group 00, no serial 0000), IP addresses their octet ranges.
Secrets are the well-known key formats (cloud providers, code hosts, chat tools, private key blocks) and
`name = value` assignments whose name says it is a secret and whose value looks random.
"""

from __future__ import annotations

import ipaddress
import math
import re
from dataclasses import dataclass
from typing import Callable

KINDS = ("email", "phone", "payment_card", "iban", "us_ssn", "ip_address", "secret")


@dataclass(frozen=True, slots=True)
class Match:
    kind: str
    start: int
    end: int


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


_CARD_PREFIX = re.compile(r"^(4|5[1-5]|2[2-7]|3[47]|6(?:011|5|4[4-9])|3(?:0[0-5]|[68])|35)")


def _card(text: str) -> bool:
    digits = re.sub(r"[ -]", "", text)
    return 13 <= len(digits) <= 19 and bool(_CARD_PREFIX.match(digits)) and _luhn(digits) and len(set(digits)) > 1


# Lengths of the IBAN registry (SWIFT, ISO 13616) for the countries that use them.
_IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BR": 29, "BY": 28,
    "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18,
    "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22,
    "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32, "LI": 21, "LT": 20,
    "LU": 20, "LV": 21, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MR": 27, "MT": 31, "MU": 30, "NL": 18, "NO": 15,
    "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "SA": 24, "SC": 31, "SE": 24, "SI": 19,
    "SK": 24, "SM": 27, "ST": 25, "SV": 28, "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
}


def _iban(text: str) -> bool:
    compact = re.sub(r"\s", "", text).upper()
    if _IBAN_LENGTHS.get(compact[:2]) != len(compact):
        return False
    rearranged = compact[4:] + compact[:4]
    number = "".join(str(int(ch, 36)) for ch in rearranged)
    return int(number) % 97 == 1


def _ssn(text: str) -> bool:
    area, group, serial = re.split(r"[ -]", text) if re.search(r"[ -]", text) else (text[:3], text[3:5], text[5:])
    return area not in ("000", "666") and not area.startswith("9") and group != "00" and serial != "0000"


def _ip(text: str) -> bool:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return False
    if address.version == 4:
        return text.count(".") == 3
    return text.count(":") >= 2


def _phone(text: str) -> bool:
    digits = re.sub(r"\D", "", text)
    if not 9 <= len(digits) <= 15 or len(set(digits)) < 3:
        return False
    if text.startswith(("+", "(")):
        return True
    # Without a country code or an area code in brackets: grouped like a phone number (not a date, an SSN or a
    # bare run of digits, which is as likely an order number), ending in a group of three digits or more.
    groups = re.split(r"[ .\-]", text)
    return len(groups) >= 3 and len(groups[-1]) >= 3 and not re.fullmatch(r"\d{3}[- ]\d{2}[- ]\d{4}", text)


def _entropy(value: str) -> float:
    counts: dict[str, int] = {}
    for ch in value:
        counts[ch] = counts.get(ch, 0) + 1
    return -sum(c / len(value) * math.log2(c / len(value)) for c in counts.values())


def _assigned_secret(text: str) -> bool:
    value = re.split(r"[:=]\s*", text, maxsplit=1)[-1].strip("'\" ")
    return len(value) >= 12 and _entropy(value) >= 3.0 and not value.isalpha()


_Check = Callable[[str], bool]
_PATTERNS: list[tuple[str, re.Pattern, _Check | None, int]] = [
    # (kind, candidates, check, capture group holding the value)
    ("secret", re.compile(r"-----BEGIN (?:[A-Z]+ )?PRIVATE KEY-----[\s\S]*?(?:-----END (?:[A-Z]+ )?PRIVATE KEY-----|$)"),
     None, 0),
    ("secret", re.compile(
        r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"                     # AWS access key id
        r"|\bgh[pousr]_[A-Za-z0-9]{36,255}\b"                 # GitHub tokens
        r"|\bgithub_pat_[A-Za-z0-9_]{60,255}\b"
        r"|\bglpat-[A-Za-z0-9_\-]{20,}\b"                     # GitLab
        r"|\bxox[abposr]-[A-Za-z0-9-]{10,}\b"                 # Slack
        r"|\bsk-(?:proj-|ant-)?[A-Za-z0-9_\-]{20,}\b"          # OpenAI, Anthropic
        r"|\bmw-[A-Za-z0-9_\-]{40,}\b"                        # Modelworks keys
        r"|\bAIza[0-9A-Za-z_\-]{35}\b"                        # Google API keys
        r"|\b(?:sk|rk)_live_[0-9A-Za-z]{24,}\b"               # Stripe
        r"|\beyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}"  # JSON web tokens
        r"|\bAccountKey=[A-Za-z0-9+/=]{40,}"                   # Azure storage connection strings
    ), None, 0),
    ("secret", re.compile(
        r"(?i)\b(?:api[_-]?key|secret(?:[_-]?key)?|access[_-]?token|auth[_-]?token|password|passwd|pwd|client[_-]?secret)"
        r"\b[\"']?\s*[:=]\s*[\"']?[^\s\"',;]{8,}"), _assigned_secret, 0),
    ("email", re.compile(r"\b[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}\b"), None, 0),
    ("iban", re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b"), _iban, 0),
    ("payment_card", re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])"), _card, 0),
    ("us_ssn", re.compile(r"(?<![\d-])(\d{3}-\d{2}-\d{4}|\d{3} \d{2} \d{4})(?![\d-])"), _ssn, 1),
    ("ip_address", re.compile(r"(?<![\w.:])(?:\d{1,3}(?:\.\d{1,3}){3}|(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4})(?![\w.:])"),
     _ip, 0),
    ("phone", re.compile(r"(?<![\w+])(?:\+\d{1,3}[ .\-]?)?(?:\(\d{1,4}\)[ .\-]?)?\d{2,4}(?:[ .\-]?\d{2,4}){1,4}(?!\w)"),
     _phone, 0),
]


def find(text: str, kinds: tuple[str, ...] | frozenset[str] = KINDS) -> list[Match]:
    """Every PII or secret in `text` of the given kinds, earliest first; overlapping candidates go to the kind
    listed first in the patterns (a card number is not also reported as a phone number)."""
    found: list[Match] = []
    taken: list[tuple[int, int]] = []
    for kind, pattern, check, group in _PATTERNS:
        if kind not in kinds:
            continue
        for m in pattern.finditer(text):
            start, end = m.span(group)
            if check is not None and not check(m.group(group)):
                continue
            if any(start < e and s < end for s, e in taken):
                continue
            taken.append((start, end))
            found.append(Match(kind, start, end))
    found.sort(key=lambda m: m.start)
    return found


def redact(text: str, matches: list[Match]) -> str:
    """Replace each match with a placeholder naming its kind, e.g. `[EMAIL]`."""
    out, last = [], 0
    for m in sorted(matches, key=lambda m: m.start):
        if m.start < last:
            continue
        out.append(text[last:m.start])
        out.append(f"[{m.kind.upper()}]")
        last = m.end
    out.append(text[last:])
    return "".join(out)
