"""Reading expression files into AnnData (``.h5ad`` and the ``X``/``Y`` ``.h5`` layout), and
writing results: output paths checked before any work, files written whole or not at all."""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

from .validation import InputError

#: Names the ``X``/``Y`` ``.h5`` layout (scDeepCluster, scDCC) uses for optional axes names.
_GENE_NAME_KEYS = ("gene_names", "var_names", "genes")
_CELL_NAME_KEYS = ("cell_names", "obs_names", "barcodes", "cells")


def _strings(values: np.ndarray) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in np.asarray(values).ravel()]


def read_xy_h5(path: str | os.PathLike, label_key: str = "cell_type") -> ad.AnnData:
    """Read the ``.h5`` layout of the scDeepCluster / scDCC family.

    Parameters
    ----------
    path
        File with a ``X`` dataset (cells x genes) and optionally ``Y``
        (one label per cell) and gene / cell name datasets.
    label_key
        ``obs`` column that receives ``Y``.

    Returns
    -------
    AnnData
        Counts in ``X`` (CSR float32), labels in ``obs[label_key]``.
    """
    with h5py.File(path, "r") as handle:
        if "X" not in handle or not isinstance(handle["X"], h5py.Dataset):
            found = "'X' is a group, not a dataset" if "X" in handle else "no 'X' dataset (cells x genes) found"
            raise InputError(f"{path}: {found}; keys are {sorted(handle.keys())}. "
                             "Convert it to .h5ad, or store the counts as dataset 'X'.")
        raw = handle["X"][()]
        labels = handle["Y"][()] if "Y" in handle else None
        genes = next((_strings(handle[k][()]) for k in _GENE_NAME_KEYS if k in handle), None)
        cells = next((_strings(handle[k][()]) for k in _CELL_NAME_KEYS if k in handle), None)
    if raw.ndim != 2:
        raise InputError(f"{path}: 'X' has {raw.ndim} dimensions; a cells x genes matrix is needed.")
    if not np.issubdtype(raw.dtype, np.number):
        raise InputError(f"{path}: 'X' has dtype {raw.dtype}, not numbers; store counts as numbers.")
    if labels is not None and len(labels) != raw.shape[0] and len(labels) == raw.shape[1]:
        warnings.warn(f"{path}: 'X' is genes x cells (its columns match 'Y'); transposing.", UserWarning)
        raw = raw.T
    matrix = sp.csr_matrix(raw.astype(np.float32))
    obs = pd.DataFrame(index=cells if cells and len(cells) == matrix.shape[0]
                       else [f"cell_{i}" for i in range(matrix.shape[0])])
    var = pd.DataFrame(index=genes if genes and len(genes) == matrix.shape[1]
                       else [f"gene_{j:05d}" for j in range(matrix.shape[1])])
    adata = ad.AnnData(X=matrix, obs=obs, var=var)
    if labels is not None:
        if len(labels) != matrix.shape[0]:
            raise InputError(f"{path}: 'Y' has {len(labels)} labels for {matrix.shape[0]} cells.")
        adata.obs[label_key] = pd.Categorical(_strings(labels))
    adata.uns["gene_symbols"] = genes is not None
    return adata


def read(path: str | os.PathLike, *, label_key: str = "cell_type", backed: bool = False) -> ad.AnnData:
    """Read an expression file for clustering.

    Parameters
    ----------
    path
        ``.h5ad`` (AnnData), or ``.h5``: the ``X``/``Y`` layout of
        scDeepCluster / scDCC, a 10x Genomics feature-barcode matrix, or an
        AnnData file saved under an ``.h5`` name.
    label_key
        ``obs`` column for labels read from an ``X``/``Y`` file.
    backed
        Open an ``.h5ad`` in backed mode (``X`` stays on disk).

    Returns
    -------
    AnnData

    Raises
    ------
    FileNotFoundError
        The path does not exist.
    InputError
        A folder, another file type, a damaged file, or an ``.h5`` without
        a numeric ``X`` dataset.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"No such file: {path}. Check the path (relative paths start at {Path.cwd()}).")
    if path.is_dir():
        raise InputError(f"{path} is a folder; pass an .h5ad or .h5 file.")
    suffix = path.suffix.lower()
    if suffix not in (".h5ad", ".h5", ".hdf5"):
        raise InputError(f"{path}: unsupported file type '{suffix}'; pass an .h5ad file or an .h5 file "
                         "with X (cells x genes) and Y datasets.")
    if not h5py.is_hdf5(path):
        raise InputError(f"{path} is not an HDF5 file (corrupt, truncated or another format); "
                         "pass a valid .h5ad or .h5 file.")
    if suffix == ".h5ad":
        return _read_h5ad(path, backed)
    try:
        with h5py.File(path, "r") as handle:
            is_10x = "matrix" in handle and isinstance(handle["matrix"], h5py.Group)
            # An AnnData file saved under an .h5 name.
            is_anndata = all(key in handle for key in ("X", "obs", "var"))
    except OSError as error:
        raise InputError(f"{path}: could not be opened as HDF5 ({error}); the file may be truncated "
                         "or damaged.") from error
    if is_anndata:
        return _read_h5ad(path, backed)
    if is_10x:
        import scanpy as sc

        adata = sc.read_10x_h5(path)
        adata.var_names_make_unique()
        return adata
    return read_xy_h5(path, label_key=label_key)


def _read_h5ad(path: Path, backed: bool) -> ad.AnnData:
    try:
        return ad.read_h5ad(path, backed="r" if backed else None)
    except Exception as error:  # anndata raises many types for damaged files
        raise InputError(f"{path}: could not be read as AnnData ({type(error).__name__}: {error}); "
                         "re-export it with anndata.") from error


def _nearest_folder(path: Path) -> Path:
    """The deepest existing ancestor of ``path`` (what would hold it once missing folders are made)."""
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def _check_folder_writable(folder: Path, what: str, target: Path) -> None:
    if not folder.is_dir():
        raise InputError(f"{what} {target}: {folder} is a file, not a folder; choose another path.")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise InputError(f"{what} {target}: cannot write in {folder} ({error.strerror or error}); choose a "
                         "folder you can write to.") from error


def check_output_file(path: str | os.PathLike, what: str = "--out", suffix: str = ".h5ad") -> Path:
    """Refuse an output file that could not be written, before any work is done.

    Parameters
    ----------
    path
        Where the result will go.
    what
        How messages name the path (the command-line option).
    suffix
        The only suffix accepted (the result is AnnData, HDF5).

    Returns
    -------
    Path

    Raises
    ------
    InputError
        Another suffix, a folder, a path under a file, or a folder without
        write permission.
    """
    path = Path(path)
    if path.suffix.lower() != suffix:
        raise InputError(f"{what} {path}: the result is written as AnnData (HDF5); give the file the {suffix} "
                         f"suffix, e.g. {path.with_suffix(suffix).name}.")
    if path.is_dir():
        raise InputError(f"{what} {path} is a folder; name a file in it, e.g. {path / ('result' + suffix)}.")
    _check_folder_writable(_nearest_folder(path), what, path)
    if path.exists() and not os.access(path, os.W_OK):
        raise InputError(f"{what} {path} exists and cannot be overwritten; choose another file.")
    return path


def check_output_folder(path: str | os.PathLike, what: str) -> Path:
    """Refuse an output folder that could not be made or written to, before any work is done."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"{what} {path} is a file; name a folder.")
    _check_folder_writable(path if path.exists() else _nearest_folder(path), what, path)
    return path


def write_h5ad(adata: ad.AnnData, path: str | os.PathLike) -> Path:
    """Write ``adata`` to ``path`` whole or not at all.

    The file is written next to its destination under a temporary name and
    renamed over it at the end, so an interruption (Ctrl-C, a full disk)
    leaves no partial file at ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.stem}.partial{path.suffix}")
    try:
        # pandas 3 gives string columns and indices a nullable string dtype, which anndata 0.12 writes only
        # when asked to (older anndata cannot read them back, hence its default).
        allow = getattr(ad.settings, "allow_write_nullable_strings", None)
        if allow is False:
            with ad.settings.override(allow_write_nullable_strings=True):
                adata.write_h5ad(partial)
        else:
            adata.write_h5ad(partial)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path
