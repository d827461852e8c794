"""prepare_images (channels, size, scale, normalization) and check_image_size."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from autosub.data.task import check_image_size, prepare_images
from autosub.errors import ConfigError


def test_prepare_images_gray_resize_normalize():
    x = torch.full((2, 1, 8, 8), 0.75)
    out = prepare_images(x, image_size=16, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    assert out.shape == (2, 3, 16, 16) and out.dtype == torch.float32
    assert torch.allclose(out, torch.ones_like(out), atol=1e-5)
    u8 = np.full((1, 4, 4, 3), 255, dtype=np.uint8)  # channels-last uint8 (PIL / numpy layout)
    out = prepare_images(u8, image_size=None, mean=None, std=None)
    assert out.shape == (1, 3, 4, 4) and float(out.max()) == 1.0


def test_image_size_is_an_int_or_a_pair_of_positive_ints():
    assert check_image_size(32, "f") == (32, 32) and check_image_size((24, 32), "f") == (24, 32)
    for bad in (0, -3, (32,), (32, 0), "32", True, (16.0, 16)):
        with pytest.raises(ConfigError, match="'image_size' parameter of f"):
            check_image_size(bad, "f")
