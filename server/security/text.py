"""Input normalisation that never corrupts legitimate text: control characters out, nothing escaped."""

from __future__ import annotations

import unicodedata

from email_validator import EmailNotValidError, validate_email

_KEPT_CONTROLS = {"\n", "\t"}


def normalize_text(value: str) -> str:
    """Remove NUL and other control characters except newline and tab. HTML is left alone: escaping is
    the renderer's job, and text stored escaped would come back corrupted."""
    if value.isprintable():
        return value
    return "".join(
        character for character in value if character in _KEPT_CONTROLS or unicodedata.category(character) != "Cc"
    )


def normalize_email(value: str) -> str:
    """The address, syntax-checked and lower-cased (accounts are case-insensitive); ValueError names the flaw."""
    try:
        checked = validate_email(value.strip(), check_deliverability=False)
    except EmailNotValidError as error:
        raise ValueError(str(error)) from None
    return checked.normalized.lower()
