"""Added inference cost: the FLOP share from the first tuned block to the output."""
from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from autosub.model.blocks import discover_blocks
from autosub.model.cost import count_flops


def test_fork_share_falls_with_depth_and_full_costs_everything(test_resnet):
    part = discover_blocks(test_resnet)
    x = torch.randn(1, 3, 32, 32)
    flops = count_flops(test_resnet, part, x)
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        test_resnet(x)
    assert flops.total == fc.get_total_flops()
    shares = [flops.fork_share(i) for i in range(len(part) + 1)]
    assert all(a > b for a, b in zip(shares, shares[1:]))
    assert 0 < shares[-1] < 0.05 and shares[0] < 1.0
    assert flops.added_cost("all") == 1.0
    assert flops.added_cost((2, 3)) == flops.fork_share(2)
    assert flops.added_cost(()) == shares[-1]
    assert all(b > 0 for b in flops.blocks) and flops.stem > 0
