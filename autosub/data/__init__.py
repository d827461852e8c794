"""Data: ``task`` (Task, Split, prepare_images), ``sources`` (as_task for arrays, Datasets, folders, texts),
``datasets`` (real datasets shipped in pip packages, offline)."""
from .task import Inputs, Split, Task, check_image_size, prepare_images, take

__all__ = ["Inputs", "Split", "Task", "check_image_size", "prepare_images", "take", "datasets", "sources", "task"]
