"""`streamvad doctor`: what an operator reads to tell why a path is slow, skipped or failing."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from streamvad.doctor import report


def test_doctor_names_the_free_disk_under_the_working_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    line = next(line for line in report().splitlines() if line.startswith("disk free"))
    gb, unit, _under, folder = line.split()[2:]
    assert unit == "GB" and folder == os.getcwd()
    assert float(gb) == pytest.approx(shutil.disk_usage(tmp_path).free / 2**30, abs=0.5)  # the disk moves a little
