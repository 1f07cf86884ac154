"""Datasets for synopt: a registry of named datasets with train/val/test splits, and event-camera readers.

    from synopt.data import load, list_datasets
    splits = load("mnist", root="/data")            # or set SYNOPT_DATA_ROOT
    splits.train, splits.val, splits.test, splits.num_classes, splits.input_shape

See docs/data.md for the layouts accepted, the splits and the event representations.
"""

from .errors import DatasetError
from .registry import (
    ENV_DATA_ROOT,
    DatasetInfo,
    DatasetSplits,
    list_datasets,
    check_name,
    load,
    register,
    resolve_root,
    split_indices,
)
from .static import ImageDataset, build_augment  # registers the static datasets
from .events import (  # registers nmnist
    EVENT_DTYPE,
    EVENT_SUFFIXES,
    NMNIST_SENSOR_SIZE,
    EventFolderDataset,
    collate_frames,
    events_to_frames,
    events_to_image,
    read_events,
)

__all__ = [
    "DatasetError",
    "DatasetSplits",
    "DatasetInfo",
    "ENV_DATA_ROOT",
    "load",
    "list_datasets",
    "check_name",
    "resolve_root",
    "register",
    "split_indices",
    "read_events",
    "events_to_frames",
    "events_to_image",
    "collate_frames",
    "EventFolderDataset",
    "ImageDataset",
    "build_augment",
    "EVENT_DTYPE",
    "EVENT_SUFFIXES",
    "NMNIST_SENSOR_SIZE",
]
