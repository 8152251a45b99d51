"""Input normalisation that never corrupts legitimate text: control characters out, nothing escaped."""

from __future__ import annotations

import re
import unicodedata

from email_validator import EmailNotValidError, validate_email

_KEPT_CONTROLS = {"\n", "\t"}
# Something to read: a character that is neither white space nor a control character. The OpenAPI document states
# the same expression for message text.
VISIBLE_CHARACTER = r"[^\s\x00-\x1f\x7f-\x9f]"
_VISIBLE = re.compile(VISIBLE_CHARACTER)


def has_visible_text(value: str) -> bool:
    return _VISIBLE.search(value) is not None


def normalize_text(value: str) -> str:
    """Remove NUL and other control characters except newline and tab. HTML is left alone: escaping is
    the renderer's job, and text stored escaped would come back corrupted."""
    if value.isprintable():
        return value
    return "".join(
        character for character in value if character in _KEPT_CONTROLS or unicodedata.category(character) != "Cc"
    )


def email_pattern() -> str:
    """The rule email-validator adds to an address's syntax, as a regular expression for the OpenAPI document: no
    special-use or reserved domain (example.test, printer.local, ...). Built from the library's own list."""
    from email_validator import SPECIAL_USE_DOMAIN_NAMES

    def any_case(name: str) -> str:  # no inline flags: the pattern must read the same in every regex dialect
        return "".join(f"[{char}{char.upper()}]" if char.isalpha() else re.escape(char) for char in name)

    names = "|".join(any_case(name) for name in SPECIAL_USE_DOMAIN_NAMES)
    return f"^(?![\\s\\S]*[@.](?:{names})$)"


def normalize_email(value: str) -> str:
    """The address, syntax-checked, in compatibility form (NFKC) and lower case; ValueError names the flaw.

    Accounts are case-insensitive, and look-alikes are one account: a full-width a1@x.com is the ASCII one."""
    try:
        checked = validate_email(unicodedata.normalize("NFKC", value).strip(), check_deliverability=False)
    except EmailNotValidError as error:
        raise ValueError(str(error)) from None
    return unicodedata.normalize("NFKC", checked.normalized.lower())
