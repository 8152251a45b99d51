"""A built wheel carries prompts/ and migrations/ and finds them when installed, away from the checkout."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.support import REPO_ROOT, clean_environment


@pytest.mark.slow
def test_wheel_ships_prompts_and_migrations_and_uses_them(tmp_path: Path, migrated_database_url: str) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "build",
            "--wheel",
            "--no-isolation",
            "--outdir",
            str(tmp_path / "dist"),
            str(REPO_ROOT),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = (tmp_path / "dist").glob("agentctl-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "agentctl/prompts/system.md" in names
    shipped_migrations = {Path(name).name for name in names if name.startswith("agentctl/migrations/")}
    expected = {path.name for path in (REPO_ROOT / "migrations").glob("*.py")}
    assert expected
    assert expected <= shipped_migrations
    # The web page and its vendored libraries, with their licences: everything under server/web/static.
    static = REPO_ROOT / "server" / "web" / "static"
    page_files = {path.relative_to(REPO_ROOT).as_posix() for path in static.rglob("*") if path.is_file()}
    assert "server/web/static/index.html" in page_files
    assert "server/web/static/vendor/dompurify.LICENSE" in page_files
    assert page_files <= names

    target = tmp_path / "installed"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = clean_environment(PYTHONPATH=str(target), DATABASE_URL=migrated_database_url)
    located = subprocess.run(
        [sys.executable, "-c", "from agentctl.resources import *; print(migrations_dir()); print(prompts_dir())"],
        cwd=elsewhere,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    assert all(Path(path).is_relative_to(target) for path in located), located

    check = subprocess.run(
        [sys.executable, "-m", "agentctl", "migrate", "--check"], cwd=elsewhere, env=env, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stderr
    assert check.stdout.strip() == "schema is current"
