"""Point sets on CY hypersurfaces: sampling, atomic .npz files (cymetric-compatible) and the Lightning DataModule.

The DataModule names are imported lazily, so that the command line (``python -m mflow.data``) does not pay
for importing Lightning.
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

__all__ = [
    "CYDataModule",
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

_LAZY = {"CYDataModule", "PointsDataset", "ShardedBatchSampler"}


def __getattr__(name):
    if name in _LAZY:
        from . import datamodule

        return getattr(datamodule, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
