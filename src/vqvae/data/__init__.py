"""Image datasets (a leaf: imports nothing else of the package but config and errors)."""
from .choose import DataSummary, PresetChoice, check_data_channels, choose_preset, describe_data
from .datasets import NAMED, ImageSet, data_identity, Splits, as_splits, load_dataset, load_image, load_splits, read_idx, relabel, split_validation
from .loader import Batches, ShardedBatchSampler, TensorBatches, epoch_permutation

__all__ = ["NAMED", "ImageSet", "data_identity", "Splits", "as_splits", "load_dataset", "load_image", "load_splits", "read_idx", "relabel", "split_validation",
           "Batches", "ShardedBatchSampler", "TensorBatches", "epoch_permutation",
           "DataSummary", "PresetChoice", "check_data_channels", "choose_preset", "describe_data"]
