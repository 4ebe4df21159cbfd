"""Image datasets (a leaf: imports nothing else of the package but config and errors)."""
from .datasets import NAMED, ImageSet, load_dataset, load_image, load_splits, read_idx
from .loader import Batches, ShardedBatchSampler, TensorBatches, epoch_permutation

__all__ = ["NAMED", "ImageSet", "load_dataset", "load_image", "load_splits", "read_idx", "Batches",
           "ShardedBatchSampler", "TensorBatches", "epoch_permutation"]
