#!/usr/bin/env python3
"""Developer entry point; needs only Python >= 3.10 (stdlib only).

    python3 dev.py demo [ARGS...]    run `edgemesh demo ARGS...`
    python3 dev.py test [ARGS...]    run `pytest ARGS...`
    python3 dev.py lint              run ruff, mypy --strict and the import layers

Each creates ./.venv when missing and (re)installs edgemesh into it, editable, whenever
setup.cfg or pyproject.toml changed since the last install.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / ("python.exe" if os.name == "nt" else "python")
LINT_PATHS = ["edgemesh", "twisted/plugins"]


def say(message: str) -> None:
    print(f"dev.py: {message}", file=sys.stderr, flush=True)


def fail(message: str) -> int:
    say(f"error: {message}")
    return 1


def run(*args: str | Path) -> int:
    return subprocess.run([str(a) for a in args], cwd=ROOT, check=False).returncode


def venv_works() -> bool:
    if not PYTHON.exists():
        return False
    probe = subprocess.run([PYTHON, "-m", "pip", "--version"], capture_output=True, check=False)
    return probe.returncode == 0


def make_venv() -> str | None:
    """Create .venv; return an error message when this Python cannot."""
    say(f"creating {VENV} with {sys.executable} (Python {sys.version.split()[0]})")
    shutil.rmtree(VENV, ignore_errors=True)
    result = subprocess.run(
        [sys.executable, "-m", "venv", VENV], capture_output=True, text=True, check=False
    )
    if result.returncode == 0 and venv_works():
        return None
    shutil.rmtree(VENV, ignore_errors=True)
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    return (
        f"`{sys.executable} -m venv` failed: the venv module or ensurepip is missing.\n"
        f"  On Debian/Ubuntu: apt-get install python3-venv   (or python{version}-venv)\n"
        f"  Then run this command again.\n{result.stderr.strip()}"
    )


def ensure_installed(extras: str) -> str | None:
    """Install `.[extras]` editable unless the stamp says it is current; return an error."""
    if not venv_works() and (error := make_venv()):
        return error
    digest = hashlib.sha256()
    for name in ("setup.cfg", "pyproject.toml"):
        digest.update((ROOT / name).read_bytes())
    stamp = VENV / f".installed-{extras.replace(',', '-')}"
    if stamp.exists() and stamp.read_text() == digest.hexdigest():
        return None
    say(f"installing edgemesh[{extras}] into .venv (new venv, or packaging files changed)")
    # Editable: the venv runs the checkout (setup.cfg's package_dir explains how twistd
    # then finds twisted/plugins), so only packaging changes need a reinstall.
    pip: list[str | Path] = [PYTHON, "-m", "pip", "--disable-pip-version-check", "install", "-q"]
    if run(*pip, "-e", f".[{extras}]"):
        return f"pip could not install edgemesh[{extras}]; see its output above"
    stamp.write_text(digest.hexdigest())
    return None


def lint() -> int:
    if error := ensure_installed("test,lint"):
        return fail(error)
    checks: dict[str, list[str | Path]] = {
        "ruff": [BIN / "ruff", "check", "."],
        "mypy": [PYTHON, "-m", "mypy", *LINT_PATHS],
        # docs/architecture.md's layers, enforced (contracts in setup.cfg [importlinter]).
        "import-linter": [BIN / "lint-imports"],
    }
    failed = []
    for name, command in checks.items():
        say(f"{name}: {' '.join(map(str, command))}")
        if run(*command):
            failed.append(name)
    if failed:
        return fail(f"lint failed: {', '.join(failed)}")
    say("lint passed (ruff, mypy --strict, import layers)")
    return 0


def main(argv: list[str]) -> int:
    if sys.version_info < (3, 10):  # noqa: UP036 - dev.py runs on whatever python3 is at hand
        return fail(f"Python >= 3.10 is needed; this is {sys.version.split()[0]}")
    command, args = (argv[0], argv[1:]) if argv else ("", [])
    if command == "lint":
        return lint()
    if command not in ("demo", "test"):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    if error := ensure_installed("test"):
        return fail(error)
    if command == "demo":
        exe = BIN / "edgemesh"
        os.execv(exe, [str(exe), "demo", *args])
    os.chdir(ROOT)  # so pytest finds its configuration whatever the caller's directory
    os.execv(PYTHON, [str(PYTHON), "-m", "pytest", *args])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
