"""Data: ``task`` (Task, Split, prepare_images), ``sources`` (as_task for arrays, Datasets, folders, texts),
``datasets`` (real datasets shipped in pip packages, offline)."""
from .task import Inputs, Split, Task, check_image_size, concat_splits, prepare_images, take, to_device

__all__ = ["Inputs", "Split", "Task", "check_image_size", "concat_splits", "prepare_images", "take", "to_device",
           "datasets", "sources", "task"]
