"""The unit of ``Budget.compute``: one full-finetuning epoch on this task and machine, measured in a few steps;
and whether a profile prior fits a budget."""
from __future__ import annotations

import copy
import math
import time
from typing import Any

import torch
from torch import nn

from ..data.task import Task, take, to_device
from .budget import Budget
from .space import BoundSpace

__all__ = ["measure_epoch_seconds", "profile_affordable"]


def measure_epoch_seconds(work: nn.Module, task: Task, partition: Any = None, *, batch_size: int,
                          device: torch.device, amp: bool | None = None, steps: int = 2) -> float:
    """Estimate one full-finetune epoch (train steps + validation pass) from a few timed steps."""
    net = copy.deepcopy(work).to(device).train()
    for p in net.parameters():
        p.requires_grad_(True)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-5)
    amp = device.type == "cuda" if amp is None else amp
    n, bs = len(task.train), min(batch_size, len(task.train))
    idx = torch.arange(bs)
    x, y = to_device(take(task.train.inputs, idx), device), task.train.targets[idx].to(device)
    times = []
    for i in range(steps + 1):  # the first step warms up
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = nn.functional.cross_entropy(net(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - t0)
    net.eval()
    m = min(len(task.val), 256)
    t0 = time.perf_counter()
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        net(to_device(take(task.val.inputs, torch.arange(m)), device))
    if device.type == "cuda":
        torch.cuda.synchronize()
    val_s = (time.perf_counter() - t0) * len(task.val) / m
    return float(math.ceil(n / bs) * (sum(times) / len(times)) + val_s)


def profile_affordable(budget: Budget, bound: BoundSpace, epoch_seconds: float) -> bool:
    """Whether the one-epoch profile (estimated from FLOP shares) costs at most half a compute or time budget."""
    share = bound.fork_share or [1.0] * (bound.n + 1)
    est = sum(share[: bound.n])  # one epoch per block, in full-FT epochs
    limits = [budget.compute, budget.seconds / epoch_seconds if budget.seconds else None]
    return all(limit is None or est <= 0.5 * limit for limit in limits)
