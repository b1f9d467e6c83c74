"""Loading user embedding, score and ground-truth files, with checks at the boundary.

Arrays are read with ``allow_pickle=False`` everywhere: a file holding Python
objects is rejected, never unpickled.

Formats: ``.npy`` (optionally memory-mapped), ``.npz`` and ``.safetensors``
(the optional ``safetensors`` package) holding float32, float16 or bfloat16
arrays. NumPy has no bfloat16 type of its own: a ``.npy`` written from a
JAX or ``ml_dtypes`` bfloat16 array stores 2-byte void items, which are read
back as bfloat16.
"""

from __future__ import annotations

import json
import logging
import zipfile
from pathlib import Path

import ml_dtypes
import numpy as np

from nia_jax._validation import NORM_TOLERANCE, NormPolicy, as_embeddings, check_norm_policy
from nia_jax.errors import InputError

logger = logging.getLogger(__name__)

EMBEDDING_SUFFIXES = (".npy", ".npz", ".safetensors")
# The first bytes of each format; NumPy tries to unpickle any file that has neither of its own.
NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")  # a zip entry, or an empty archive
PICKLE_MAGIC = b"\x80"  # pickle protocols 2 and later start with the PROTO opcode
# Rows checked per chunk when validating a memory-mapped array.
CHUNK_ROWS = 16384


def load_array(path: str | Path, key: str | None = None, *, mmap: bool = False) -> np.ndarray:
    """Read one array from a ``.npy`` file, or one key of an ``.npz`` or ``.safetensors`` file.

    With ``mmap=True`` a ``.npy`` file is memory-mapped read-only
    (``mmap_mode="r"``): rows are read from disk when used. ``.npz`` and
    ``.safetensors`` arrays are always read into memory.

    Raises InputError when the file is missing, has another suffix, is
    truncated, holds pickled objects, or lacks ``key``.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found. Check the path (relative paths are resolved from {Path.cwd()}).")
    suffix = path.suffix.lower()
    if suffix not in EMBEDDING_SUFFIXES:
        raise InputError(f"{path}: unsupported file type {suffix!r}; expected one of {EMBEDDING_SUFFIXES}.")
    if mmap and suffix != ".npy":
        logger.info("%s: only .npy files can be memory-mapped; reading it into memory.", path)
    if suffix in (".npy", ".npz"):
        _check_signature(path, suffix)
    if suffix == ".npy":
        _check_npy_size(path)
    try:
        if suffix == ".npy":
            if key is not None:
                raise InputError(f"{path}: a .npy file contains one array, so key={key!r} cannot apply. Drop the key.")
            return _bfloat16_view(np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False), path)
        if suffix == ".safetensors":
            return _load_safetensors(path, key)
        with np.load(path, allow_pickle=False) as archive:
            names = list(archive.keys())
            key = _pick_key(path, names, key)
            return _bfloat16_view(archive[key], path)
    except InputError:
        raise
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise InputError(
                f"{path}: contains Python objects (a pickled array), which are never loaded. "
                "Save a numeric array instead, for example np.save(path, emb.astype(np.float32))."
            ) from exc
        raise InputError(f"{path}: not a valid NumPy array file ({exc}). It may be truncated; save it again.") from exc
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise InputError(f"{path}: cannot be read ({exc}). It may be truncated or not a NumPy file; save it again.") from exc


def _check_npy_size(path: Path) -> None:
    """Raise InputError when a .npy header promises more data than the file holds.

    np.load would otherwise try to allocate the promised size first and fail
    with a MemoryError, or read a truncated array without memory mapping.
    """
    with open(path, "rb") as handle:
        try:
            version = np.lib.format.read_magic(handle)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(handle)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(handle)
            else:
                return  # format 3.0 has no public header reader; np.load checks it
        except ValueError as exc:
            raise InputError(f"{path}: invalid .npy header ({exc}). Save the array again with np.save.") from exc
        data_start = handle.tell()
    if dtype.hasobject:
        return  # np.load rejects it as pickled objects
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    actual = path.stat().st_size - data_start
    if actual < expected:
        raise InputError(
            f"{path}: the header declares a {dtype} array of shape {shape} ({expected:,} bytes), but the "
            f"file holds {actual:,} bytes of data. It is truncated or its header is corrupt; save it again."
        )


def _check_signature(path: Path, suffix: str) -> None:
    """Raise InputError unless the file starts with the signature of its suffix's format.

    Without this, np.load treats any other file as a pickle, and with
    allow_pickle=False a text file would be reported as pickled objects.
    """
    with open(path, "rb") as handle:
        head = handle.read(len(NPY_MAGIC))
    if suffix == ".npy" and head.startswith(NPY_MAGIC):
        return
    if suffix == ".npz" and head.startswith(ZIP_MAGICS):
        return
    if suffix == ".npy" and head.startswith(ZIP_MAGICS):
        raise InputError(f"{path}: is an .npz archive with a .npy name. Rename it to .npz and name the array "
                         "with the matching key setting.")
    if suffix == ".npz" and head.startswith(NPY_MAGIC):
        raise InputError(f"{path}: is a single .npy array with a .npz name. Rename it to .npy and drop the key.")
    if head.startswith(PICKLE_MAGIC):
        raise InputError(
            f"{path}: is a pickled Python object, which is never loaded. Save a numeric array instead, "
            "for example np.save(path, emb.astype(np.float32))."
        )
    expected = "a NumPy .npy array" if suffix == ".npy" else "a NumPy .npz archive"
    found = "is empty" if not head else f"starts with {head!r}"
    raise InputError(
        f"{path}: not {expected} (the file {found}). It may be text, for example CSV, or truncated; "
        "save the array with np.save (.npy) or np.savez (.npz)."
    )


def _pick_key(path: Path, names: list[str], key: str | None) -> str:
    """Return the array name to read from a multi-array file, or raise InputError."""
    if key is None:
        if len(names) != 1:
            raise InputError(f"{path}: contains arrays {names}; name the one to use with a key.")
        return names[0]
    if key not in names:
        raise InputError(f"{path}: no array named {key!r}; the file contains {names}.")
    return key


def _bfloat16_view(array: np.ndarray, path: Path) -> np.ndarray:
    """Reinterpret the 2-byte void items NumPy writes for bfloat16 arrays as bfloat16."""
    if array.dtype.kind == "V" and array.dtype.itemsize == 2 and array.dtype.names is None:
        logger.info("%s: 2-byte items without a NumPy type; reading them as bfloat16.", path)
        return array.view(ml_dtypes.bfloat16)
    return array


def _load_safetensors(path: Path, key: str | None) -> np.ndarray:
    try:
        from safetensors import safe_open
    except ImportError as exc:
        raise InputError(
            f"{path}: reading .safetensors files needs the optional safetensors package: "
            "pip install 'nia_jax[safetensors]', or save the array as .npy."
        ) from exc
    try:
        with safe_open(str(path), framework="numpy") as handle:
            names = list(handle.keys())
            return handle.get_tensor(_pick_key(path, names, key))
    except InputError:
        raise
    except Exception as exc:  # safetensors raises its own SafetensorError (not exported in every version).
        raise InputError(
            f"{path}: not a readable safetensors file ({exc}). It may be truncated; save it again."
        ) from exc


def load_embeddings(path: str | Path, key: str | None = None, *, dim: int | None = None,
                    norm_policy: NormPolicy = "warn", mmap: bool = False) -> np.ndarray:
    """Load and validate an embedding matrix (n, d).

    Without ``mmap`` the result is a new float32 array of unit-norm rows. With
    ``mmap=True`` (``.npy`` only) the file is checked in chunks of
    ``CHUNK_ROWS`` rows and returned still memory-mapped, in its stored dtype.
    Rows are then copied (to float32, normalised) only when a task is built
    from them, so a fold or subset copies only its own rows.
    """
    name = str(path) + (f"[{key}]" if key else "")
    array = load_array(path, key, mmap=mmap)
    if isinstance(array, np.memmap):
        check_rows(array, name, dim=dim, norm_policy=norm_policy)
        return array
    return as_embeddings(array, name, dim=dim, norm_policy=norm_policy)


def check_rows(array: np.ndarray, name: str, *, dim: int | None = None, norm_policy: NormPolicy = "warn",
               chunk_rows: int = CHUNK_ROWS) -> None:
    """Check an embedding matrix chunk by chunk, without copying it whole.

    Applies the checks of :func:`nia_jax._validation.as_embeddings` (2-D,
    numeric, finite, no zero rows, dimension, norms) to ``chunk_rows`` rows at
    a time. Raises InputError on the first failure.
    """
    check_norm_policy(norm_policy)
    if array.ndim != 2:
        raise InputError(f"{name}: expected a 2-D array (n, d) of embeddings, got shape {array.shape}.")
    n_off, low, high = 0, np.inf, -np.inf
    for start in range(0, max(array.shape[0], 1), chunk_rows):
        rows = np.asarray(array[start:start + chunk_rows])
        if start == 0:
            # The first chunk runs the full checks (dtype, dimension, empty input).
            as_embeddings(rows, name, dim=dim, norm_policy="normalise")
        bad = ~np.isfinite(rows.astype(np.float32)).all(axis=1)
        if bad.any():
            raise InputError(f"{name}: row {start + int(np.flatnonzero(bad)[0])} contains NaN or Inf. "
                             "Re-encode it, for example in float32 instead of float16.")
        norms = np.linalg.norm(rows.astype(np.float64), axis=1)
        if (norms == 0).any():
            raise InputError(f"{name}: row {start + int(np.flatnonzero(norms == 0)[0])} is all zeros; "
                             "a zero embedding has no direction. Remove or re-encode it.")
        off = np.abs(norms - 1.0) > NORM_TOLERANCE
        n_off += int(off.sum())
        low, high = min(low, norms.min()), max(high, norms.max())
    if n_off:
        message = f"{name}: {n_off} of {array.shape[0]} rows are not unit-norm (norms from {low:.4g} to {high:.4g})"
        if norm_policy == "reject":
            raise InputError(message + ". L2-normalise them or allow normalisation.")
        if norm_policy == "warn":
            logger.warning("%s; they are normalised when used.", message)


def load_scores(path: str | Path, key: str | None = None, *, mmap: bool = False,
                chunk_rows: int = CHUNK_ROWS) -> np.ndarray:
    """Load a precomputed similarity matrix (nq, ng), checked in chunks.

    The array keeps its stored dtype (float16 and bfloat16 are converted to
    float32 block by block when scored); with ``mmap=True`` a ``.npy`` stays
    memory-mapped. Every entry must be finite: give unscored pairs a large
    negative score instead of -inf.
    """
    name = str(path) + (f"[{key}]" if key else "")
    array = load_array(path, key, mmap=mmap)
    if array.ndim != 2 or 0 in array.shape:
        raise InputError(f"{name}: expected a 2-D score matrix (queries, gallery), got shape {array.shape}.")
    if not (np.issubdtype(array.dtype, np.floating) or array.dtype.name == "bfloat16"):
        raise InputError(f"{name}: expected floating-point scores, got dtype {array.dtype}.")
    for start in range(0, array.shape[0], chunk_rows):
        rows = np.asarray(array[start:start + chunk_rows]).astype(np.float32)
        bad = ~np.isfinite(rows).all(axis=1)
        if bad.any():
            raise InputError(f"{name}: row {start + int(np.flatnonzero(bad)[0])} contains NaN or Inf scores. "
                             "Give unscored pairs a large negative finite score, for example -100.")
    return array


def load_ids(path: str | Path) -> np.ndarray:
    """Load one id per row: a text file (one a line), a JSON list, or a 1-D ``.npy``.

    Returns int64 ids when every id is an integer, otherwise strings.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: id file not found.")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        ids = load_array(path)
    elif suffix == ".json":
        try:
            ids = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}: invalid JSON ({exc}).") from exc
        if not isinstance(ids, list):
            raise InputError(f"{path}: expected a JSON list with one id per row, got {type(ids).__name__}.")
    else:
        ids = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    ids = np.asarray(ids)
    if ids.ndim != 1:
        raise InputError(f"{path}: expected one id per row (a 1-D list), got shape {ids.shape}.")
    if np.issubdtype(ids.dtype, np.integer):
        return ids.astype(np.int64)
    strings = ids.astype(str)
    if all(s.lstrip("-").isdigit() for s in strings):
        return strings.astype(np.int64)
    return strings


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
            bad_keys = [k for k in data if not k.isdigit() or (len(k) > 1 and k.startswith("0"))]
            if bad_keys:
                raise InputError(f"{path}: keys must be query indices such as \"0\", got {bad_keys[0]!r}.")
            order = sorted(data, key=int)
            missing = sorted(set(range(len(order))) - {int(k) for k in order})
            if missing:
                raise InputError(f"{path}: keys must be the query indices 0..{len(order) - 1} with none "
                                 f"missing; missing {missing[:5]}, extra {[k for k in order if int(k) >= len(order)][:5]}.")
            data = [data[k] for k in order]
        if not isinstance(data, list):
            raise InputError(f"{path}: expected a list of positive-index lists, got {type(data).__name__}.")
        lists = []
        for query, entry in enumerate(data):
            items = entry if isinstance(entry, list) else [entry]
            if not all(isinstance(i, int) and not isinstance(i, bool) for i in items):
                raise InputError(f"{path}: query {query} has positives {entry!r}; expected integer gallery "
                                 "indices such as [3] or [3, 7].")
            lists.append(np.asarray(items, dtype=np.int64))
        return lists
    array = load_array(path)
    if not np.issubdtype(array.dtype, np.integer):
        raise InputError(f"{path}: expected integer gallery indices, got dtype {array.dtype}.")
    if array.ndim == 1:
        array = array[:, None]
    return [row[row >= 0] for row in array]
