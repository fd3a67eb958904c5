"""Lightning callbacks: the run summary, NTK drift, sigma gains, and progress lines when no terminal is attached."""
from .drift import NTKDrift
from .gain import SigmaGain
from .progress import EpochLines
from .summary import RunSummary

__all__ = ["EpochLines", "NTKDrift", "RunSummary", "SigmaGain"]
