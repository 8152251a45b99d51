"""Where the files that ship beside the code (prompts/, migrations/) are, installed or in a checkout."""

from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent


def bundled_dir(name: str) -> Path:
    """The directory ``name`` (``prompts`` or ``migrations``): inside the installed wheel, else the checkout's."""
    # A wheel carries these folders inside the package; a checkout keeps them at the top level.
    for candidate in (_PACKAGE_DIR / name, _PACKAGE_DIR.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"the {name}/ folder is missing from this installation of agentctl")


def migrations_dir() -> Path:
    return bundled_dir("migrations")


def prompts_dir() -> Path:
    return bundled_dir("prompts")
