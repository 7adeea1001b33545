"""LIBSVM binary-classification files (a9a, mushrooms, phishing, w8a) as in the EF21 experiments.

The files come from the LIBSVM data collection (Chang & Lin, https://www.csie.ntu.edu.tw/~cjlin/
libsvmtools/datasets/). The recipe is the official EF21 logistic-regression one
(arXiv 2106.05203, Sec. 5): parse with ``sklearn.datasets.load_svmlight_file`` and its
defaults, make the matrix dense float64, map the labels to {-1, +1} (smallest label -> -1) and split
the rows in file order into n contiguous clients, the last one taking the leftovers.

The folder is found, in order: the ``data_dir`` argument (``--data-dir``), the environment variable
``FEDSIM_LIBSVM_DIR``, then ``../shared/data/libsvm`` relative to the current directory and relative
to the repository root (the parent of the ``fedsim`` package). Nothing downloads.
"""
from __future__ import annotations

import functools
import os
import re
from pathlib import Path

import numpy as np

from fedsim.data.datasets import DatasetUnavailable

__all__ = ["ENV_VAR", "LIBSVM_DATASETS", "LibsvmUnavailable", "contiguous_offsets", "libsvm_path",
           "load_libsvm", "resolve_libsvm_dir"]

ENV_VAR = "FEDSIM_LIBSVM_DIR"
LIBSVM_DATASETS = ("a9a", "mushrooms", "phishing", "w8a")  # the files the EF21 experiments use
_RELATIVE_DEFAULT = Path("..") / "shared" / "data" / "libsvm"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


class LibsvmUnavailable(DatasetUnavailable, FileNotFoundError):
    """A LIBSVM file or folder is missing; the message names the path and how to pass another one."""


def _candidates() -> list[Path]:
    repo_root = Path(__file__).resolve().parents[2]  # fedsim/data/libsvm.py -> repository root
    return [Path.cwd() / _RELATIVE_DEFAULT, repo_root / _RELATIVE_DEFAULT]


def resolve_libsvm_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The LIBSVM folder: ``data_dir``, else ``$FEDSIM_LIBSVM_DIR``, else the first existing default."""
    if data_dir is not None:
        chosen, source = Path(data_dir), "--data-dir"
    elif os.environ.get(ENV_VAR):
        chosen, source = Path(os.environ[ENV_VAR]), f"${ENV_VAR}"
    else:
        tried = _candidates()
        for path in tried:
            if path.is_dir():
                return path.resolve()
        raise LibsvmUnavailable(
            "LIBSVM data folder not found (tried " + ", ".join(str(p.resolve()) for p in tried)
            + f"); pass --data-dir DIR or set {ENV_VAR}=DIR to a folder holding <name>.txt files")
    if not chosen.is_dir():
        raise LibsvmUnavailable(f"LIBSVM data folder {chosen} (from {source}) does not exist; pass "
                                f"--data-dir DIR or set {ENV_VAR}=DIR to a folder holding <name>.txt files")
    return chosen.resolve()


def libsvm_path(name: str, data_dir: str | os.PathLike | None = None) -> Path:
    """Path of ``<name>.txt`` in the resolved folder; raises ``LibsvmUnavailable`` when it is absent."""
    if not _NAME.match(name):
        raise ValueError(f"bad LIBSVM dataset name {name!r} (expected a file stem such as 'phishing')")
    path = resolve_libsvm_dir(data_dir) / f"{name}.txt"
    if not path.is_file():
        raise LibsvmUnavailable(f"LIBSVM file {path} not found; pass --data-dir DIR (or set {ENV_VAR}) "
                                f"to a folder holding {name}.txt")
    return path


def load_libsvm(name: str, data_dir: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(A [N, d] float64 dense, y [N] float64 in {-1, +1})``, rows in file order (read-only, cached)."""
    return _load_file(str(libsvm_path(name, data_dir)))


@functools.lru_cache(maxsize=8)
def _load_file(path: str) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_svmlight_file

    features, labels = load_svmlight_file(path)  # defaults: zero_based="auto", d = largest index
    a = np.asarray(features.toarray(), dtype=np.float64)
    y = _plus_minus_one(np.asarray(labels, dtype=np.float64), path)
    a.flags.writeable = False
    y.flags.writeable = False
    return a, y


def _plus_minus_one(labels: np.ndarray, path: str) -> np.ndarray:
    """Smallest label -> -1, largest -> +1 (mushrooms {1, 2}, phishing {0, 1}); ±1 labels unchanged."""
    values = np.unique(labels)
    if len(values) != 2:
        raise ValueError(f"{path}: expected two classes, found labels {values[:10].tolist()}")
    return np.where(labels == values[0], -1.0, 1.0)


def contiguous_offsets(num_rows: int, num_clients: int) -> np.ndarray:
    """Row boundaries ``[n + 1]``: client i owns rows ``[i m, (i+1) m)``, m = N // n, last gets the rest."""
    if not 1 <= num_clients <= num_rows:
        raise ValueError(f"need 1 <= clients <= rows, got {num_clients} clients for {num_rows} rows")
    m = num_rows // num_clients
    offsets = np.arange(num_clients + 1, dtype=np.int64) * m
    offsets[-1] = num_rows
    return offsets
