"""PII and secret detection: real formats are found with their spans, look-alikes are not."""

from __future__ import annotations

import pytest

from modelworks.safety import pii


def kinds(text: str) -> list[tuple[str, str]]:
    return [(m.kind, text[m.start:m.end]) for m in pii.find(text)]


@pytest.mark.parametrize("text, expected", [
    ("Mail jane.doe+news@example.co.uk today", [("email", "jane.doe+news@example.co.uk")]),
    ("Card 4111 1111 1111 1111 exp 12/29", [("payment_card", "4111 1111 1111 1111")]),
    ("Amex 3782-822463-10005.", [("payment_card", "3782-822463-10005")]),
    ("IBAN DE89 3704 0044 0532 0130 00 please", [("iban", "DE89 3704 0044 0532 0130 00")]),
    ("pay to GB82WEST12345698765432", [("iban", "GB82WEST12345698765432")]),
    ("SSN 123-45-6789", [("us_ssn", "123-45-6789")]),
    ("server at 192.168.10.254, v6 2001:db8::8a2e:370:7334", [("ip_address", "192.168.10.254"),
                                                               ("ip_address", "2001:db8::8a2e:370:7334")]),
    ("call +49 30 1234 5678 or (555) 123-4567", [("phone", "+49 30 1234 5678"), ("phone", "(555) 123-4567")]),
    ("key AKIAIOSFODNN7EXAMPLE here", [("secret", "AKIAIOSFODNN7EXAMPLE")]),
    ("token ghp_" + "a1B2" * 9, [("secret", "ghp_" + "a1B2" * 9)]),
    ("export OPENAI_API_KEY=sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8t", [("secret", "sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8t")]),
    ('password: "c0rrect-H0rse-b4ttery"', [("secret", 'password: "c0rrect-H0rse-b4ttery')]),
])
def test_found_with_spans(text, expected):
    assert kinds(text) == expected


@pytest.mark.parametrize("text", [
    "Card 4111 1111 1111 1112 fails the Luhn check",
    "0000 0000 0000 0000 is all zeros",
    "IBAN DE89 3704 0044 0532 0130 01 has a wrong checksum",
    "SSN 000-12-3456 and 666-12-3456 and 912-12-3456 are never issued",
    "version 1.2.3.4.5 and 999.1.1.1 are not addresses",
    "the year 2024 and order 12345678, shipped 2024-11-22 at 10.30.15",
    "password: hunter",  # too short to be a secret worth flagging
    "How do I kill a Python process?",
])
def test_look_alikes_are_not_found(text):
    assert kinds(text) == []


def test_redact_names_each_kind():
    text = "Write to a@b.io or call +1 415 555 0100."
    assert pii.redact(text, pii.find(text)) == "Write to [EMAIL] or call [PHONE]."


def test_only_the_kinds_asked_for():
    text = "a@b.io 4111111111111111"
    assert [m.kind for m in pii.find(text, frozenset({"payment_card"}))] == ["payment_card"]
