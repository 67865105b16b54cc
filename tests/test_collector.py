"""bot/collector.py in `python -m bot`: no GC passes while aiogram is imported, then the
start-up objects frozen and young collections in larger batches (bench/menu.py shows why)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _python(code: str, cwd: Path) -> list[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def test_the_collector_is_off_while_python_m_bot_imports_aiogram(tmp_path: Path) -> None:
    # bot/__main__.py imported as a module: its top runs, main() does not.
    code = "import gc, sys, bot.__main__; print(gc.isenabled(), 'aiogram' in sys.modules)"
    assert _python(code, tmp_path) == ["False", "True"]


def test_once_started_the_survivors_are_frozen_and_collections_come_in_batches(
    tmp_path: Path,
) -> None:
    code = (
        "import gc, bot.__main__; from bot import collector; collector.settle(); "
        "print(gc.isenabled(), gc.get_freeze_count() > 100_000, gc.get_threshold()[0])"
    )
    assert _python(code, tmp_path) == ["True", "True", str(20_000)]
