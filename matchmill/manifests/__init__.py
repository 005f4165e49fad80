"""Versioned manifest schemas, fsspec storage, atomic stage commits and tensor artifacts."""

from .columns import as_matches
from .schemas import MANIFESTS, SCHEMA_VERSION, STATUS_FAILED, STATUS_OK, make_pair_id
from .storage import ManifestError, StorageError, read_manifest, write_manifest

__all__ = [
    "as_matches",
    "MANIFESTS",
    "SCHEMA_VERSION",
    "STATUS_FAILED",
    "STATUS_OK",
    "make_pair_id",
    "ManifestError",
    "StorageError",
    "read_manifest",
    "write_manifest",
]
