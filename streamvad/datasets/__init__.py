"""Dataset layouts (UCSD Ped, Safe/Unsafe, generic folders) as lists of clips replayed through the sources."""

from streamvad.datasets.base import Clip, DatasetSplit, iter_clip, load_dataset

__all__ = ["Clip", "DatasetSplit", "iter_clip", "load_dataset"]
