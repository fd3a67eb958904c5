"""Point sets on CY hypersurfaces: sampling, atomic .npz files (cymetric-compatible), clustering, batch
samplers and the Lightning DataModules.

The DataModule names are imported lazily, so that the command line (``python -m mflow.data``) and the
geometry-only users do not pay for importing Lightning.
"""
from .pointset import (
    FORMAT_VERSION,
    PointSet,
    PointSetError,
    cymetric_arrays,
    is_cymetric_file,
    load_cymetric,
    load_pointset,
    read_metadata,
    sample_pointset,
    save_pointset,
)
from .samplers import ClusterBatchSampler, ResumableLoader, ShardedBatchSampler

__all__ = [
    "CYDataModule",
    "ClusterBatchSampler",
    "ClusteredDataModule",
    "ResumableLoader",
    "FORMAT_VERSION",
    "PointSet",
    "PointSetError",
    "PointsDataset",
    "ShardedBatchSampler",
    "cymetric_arrays",
    "is_cymetric_file",
    "load_cymetric",
    "load_pointset",
    "read_metadata",
    "sample_pointset",
    "save_pointset",
]

_LAZY = {"CYDataModule": "datamodule", "PointsDataset": "datamodule", "ClusteredDataModule": "clustered"}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
