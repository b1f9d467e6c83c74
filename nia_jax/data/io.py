"""Loading user embedding and ground-truth files, with checks at the boundary.

Arrays are read with ``allow_pickle=False`` everywhere: a file holding Python
objects is rejected, never unpickled.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

from nia_jax._validation import NormPolicy, as_embeddings
from nia_jax.errors import InputError

EMBEDDING_SUFFIXES = (".npy", ".npz")


def load_array(path: str | Path, key: str | None = None) -> np.ndarray:
    """Read one array from a ``.npy`` file or one key of an ``.npz`` file.

    Raises InputError when the file is missing, has another suffix, is
    truncated, holds pickled objects, or lacks ``key``.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found. Check the path (relative paths are resolved from {Path.cwd()}).")
    suffix = path.suffix.lower()
    if suffix not in EMBEDDING_SUFFIXES:
        raise InputError(f"{path}: unsupported file type {suffix!r}; expected one of {EMBEDDING_SUFFIXES}.")
    try:
        if suffix == ".npy":
            if key is not None:
                raise InputError(f"{path}: a .npy file holds one array, so key={key!r} cannot apply. Drop the key.")
            return np.load(path, allow_pickle=False)
        with np.load(path, allow_pickle=False) as archive:
            names = list(archive.keys())
            if key is None:
                if len(names) != 1:
                    raise InputError(f"{path}: holds arrays {names}; name the one to use with a key.")
                key = names[0]
            if key not in names:
                raise InputError(f"{path}: no array named {key!r}; the file holds {names}.")
            return archive[key]
    except InputError:
        raise
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise InputError(
                f"{path}: holds Python objects (a pickled array), which are never loaded. "
                "Save a numeric array instead, for example np.save(path, emb.astype(np.float32))."
            ) from exc
        raise InputError(f"{path}: not a valid NumPy array file ({exc}). It may be truncated; save it again.") from exc
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise InputError(f"{path}: cannot be read ({exc}). It may be truncated or not a NumPy file; save it again.") from exc


def load_embeddings(path: str | Path, key: str | None = None, *, dim: int | None = None,
                    norm_policy: NormPolicy = "warn") -> np.ndarray:
    """Load and validate an embedding matrix (n, d) as unit-norm float32 rows."""
    return as_embeddings(load_array(path, key), str(path) + (f"[{key}]" if key else ""), dim=dim,
                         norm_policy=norm_policy)


def load_positives(path: str | Path) -> list[np.ndarray]:
    """Load ground truth: for each query, the indices of its positive gallery items.

    Accepted files: JSON with a list of lists (or of ints), or an object
    mapping query index strings "0".."nq-1" to lists; ``.npy`` with an integer
    array (nq,) or (nq, p) padded with -1.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: ground-truth file not found.")
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}: invalid JSON ({exc}).") from exc
        if isinstance(data, dict):
            try:
                order = sorted(data, key=int)
            except ValueError as exc:
                raise InputError(f"{path}: keys must be query indices such as \"0\", got {next(iter(data))!r}.") from exc
            if [int(k) for k in order] != list(range(len(order))):
                raise InputError(f"{path}: keys must be the query indices 0..{len(order) - 1} with none missing.")
            data = [data[k] for k in order]
        if not isinstance(data, list):
            raise InputError(f"{path}: expected a list of positive-index lists, got {type(data).__name__}.")
        return [np.asarray(p if isinstance(p, list) else [p]) for p in data]
    array = load_array(path)
    if not np.issubdtype(array.dtype, np.integer):
        raise InputError(f"{path}: expected integer gallery indices, got dtype {array.dtype}.")
    if array.ndim == 1:
        array = array[:, None]
    return [row[row >= 0] for row in array]
