"""Text and email normalisation: control characters out, nothing escaped; addresses in one form."""

from __future__ import annotations

import pytest

from server.security.text import normalize_email, normalize_text


def test_normalize_text_removes_control_characters_and_nothing_else() -> None:
    assert normalize_text("a\x00b\x07c\x1b[31md\r\n\te") == "abc[31md\n\te"
    legitimate = "<b>Tom & Jerry</b> \"quoted\" 'single' — café 日本語 🎉\nline two\tcol"
    assert normalize_text(legitimate) == legitimate


def test_normalize_email_checks_syntax_and_lowercases() -> None:
    assert normalize_email("  Ann.Lee@Example.COM ") == "ann.lee@example.com"
    for bad in ("no-at-sign", "a@", "@example.com", "a b@example.com"):
        with pytest.raises(ValueError, match=r"\S"):
            normalize_email(bad)


def test_look_alike_addresses_normalise_to_one() -> None:
    full_width = "".join(chr(ord(char) + 0xFEE0) for char in "ann1")  # the full-width forms
    assert normalize_email(f"{full_width}@Example.com") == normalize_email("ANN1@example.com") == "ann1@example.com"
