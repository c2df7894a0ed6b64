"""Blocklists: whole-word terms across case and Unicode forms, admin regular expressions under a time limit,
and the built-in profanity list."""

from __future__ import annotations

import pytest

from modelworks.safety.blocklist import Blocklist, PatternError, profanity


def test_terms_match_whole_words_in_any_case_and_width():
    bl = Blocklist("secret-projects", ["Project Falcon", "zorblax"])
    text = "Tell me about PROJECT falcon and ｚｏｒｂｌａｘ, not zorblaxes."
    hits = bl.find(text)
    assert [(h.item, text[h.start:h.end]) for h in hits] == [("Project Falcon", "PROJECT falcon"), ("zorblax", "ｚｏｒｂｌａｘ")]


def test_patterns_match_and_report_their_source():
    bl = Blocklist("tickets", patterns=[r"\bTCK-\d{4,}\b"])
    text = "see tck-12345 and TCK-12"
    assert [(h.item, text[h.start:h.end]) for h in bl.find(text)] == [(r"\bTCK-\d{4,}\b", "tck-12345")]


def test_a_bad_pattern_is_refused_when_the_list_is_made():
    with pytest.raises(PatternError, match="not a valid regular expression"):
        Blocklist("broken", patterns=["(unclosed"])


def test_a_catastrophic_pattern_times_out_instead_of_hanging():
    bl = Blocklist("evil", patterns=[r"(a|aa)+$"])
    with pytest.raises(TimeoutError):
        bl.find("a" * 40 + "!")


def test_profanity_without_over_blocking():
    words = profanity()
    assert [h.item for h in words.find("What the fuck, this is bullshit")] == ["fuck", "bullshit"]
    assert words.find("Scunthorpe is a town; the cockpit of a plane; assess the class; hell, damn") == []
