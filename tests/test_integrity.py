"""Model files are checked at load: the SHA-256 of every file the fit wrote, array dtypes and finite values,
and the model description's shape; each failure is one line naming the file (exit 2 from the CLI)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from streamvad.cli import main
from streamvad.errors import InputError, ModelMismatchError
from streamvad.scoring.engine import MODEL_FILE, load_engine
from streamvad.scoring.integrity import digest_files
from tests.test_worker import tiny_model

__all__ = ["tiny_model"]


@pytest.fixture
def model(tiny_model: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "model"
    shutil.copytree(tiny_model, copy)
    return copy


def _reseal(model: Path) -> None:
    """Record the current files as the fit's, as a tamperer who also rewrote model.json would."""
    doc = json.loads((model / MODEL_FILE).read_text())
    doc["files"] = digest_files(model, MODEL_FILE)
    (model / MODEL_FILE).write_text(json.dumps(doc))


def test_the_fit_records_every_model_file_and_load_refuses_a_changed_one(
        model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    files = json.loads((model / MODEL_FILE).read_text())["files"]
    assert {"normality/train.npy", "normality/manifest.json", "motion/motion.npz"} <= set(files)
    assert not any(name.startswith("normality/chroma") for name in files)  # Chroma rewrites its own files
    load_engine(model)  # as fitted: loads
    train = model / "normality" / "train.npy"
    data = bytearray(train.read_bytes())
    data[-1] ^= 0x01  # one flipped bit in the memory
    train.write_bytes(bytes(data))
    with pytest.raises(ModelMismatchError, match=r"normality/train\.npy: SHA-256 differs from the one recorded"):
        load_engine(model)
    assert main(["replay", "--model", str(model), "--out", str(model.parent / "r.jsonl"), str(train)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train.npy: SHA-256 differs" in err[0]
    (model / "motion" / "motion.npz").unlink()
    _reseal(model)
    files = json.loads((model / MODEL_FILE).read_text())["files"]
    (model / "normality" / "loc_dens.npy").unlink()
    with pytest.raises(ModelMismatchError, match=r"normality/loc_dens\.npy: missing"):
        load_engine(model)
    assert "normality/loc_dens.npy" in files


def test_arrays_of_the_wrong_kind_or_not_finite_are_refused(model: Path) -> None:
    train = model / "normality" / "train.npy"
    arr = np.load(train)
    arr[0, 0, 0] = np.nan
    np.save(train, arr)
    _reseal(model)  # checksums alone would not catch a model written with NaNs
    with pytest.raises(InputError, match=r"train\.npy: holds NaN or infinite values"):
        load_engine(model)
    np.save(train, np.zeros(arr.shape, dtype=np.int32))
    _reseal(model)
    with pytest.raises(InputError, match=r"train\.npy: dtype int32, expected floats"):
        load_engine(model)


def test_a_model_description_that_is_not_an_object_is_one_line(model: Path) -> None:
    (model / MODEL_FILE).write_text("[1, 2, 3]")
    with pytest.raises(InputError, match=r"model\.json: expected a JSON object describing the model, got list"):
        load_engine(model)
