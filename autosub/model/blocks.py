"""Block discovery: split a pretrained network into stem / ordered blocks / head.

This is the one place that decides what a "block" is. Sources, in order: timm's ``group_matcher``
(via ``timm.models.group_parameters``), Hugging Face layer stacks, torchvision families, a generic
fallback (the longest run of repeated children), or the user's ``blocks=`` override.

One rule for what is neither a block nor the classifier, whatever the source: a parameter that the
source leaves unassigned joins the nearest block registered before it (the stem if none) — the
generalisation of timm's ``MATCH_PREV_GROUP``. So a final norm, a neck (``conv_head``), a pooler or the
norm inside a head container joins the *last block*, and the head is only the final classifier module
(``fc``, ``head``, ``classifier[-1]``, ...), whose input is the pooled features. With ``blocks=`` every
parameter outside the listed modules and the head is frozen context (``Partition.stem``).
"""
from __future__ import annotations

import difflib
import logging
import math
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Iterator, Sequence

from torch import nn

from ..errors import BlockDiscoveryError, ConfigError

_LOG = logging.getLogger(__name__)

GRANULARITIES = ("block", "stage")
_STEM, _HEAD = "<stem>", "<head>"  # sentinel keys; block keys are never strings
_HEAD_NAMES = ("fc", "heads", "head", "classifier", "score", "lm_head", "qa_outputs")
_HF_STACK = re.compile(r"(?:^|\.)(?:layer|layers|h|block|blocks)$")


@dataclass(frozen=True)
class Block:
    """One tunable unit of the trunk.

    ``modules`` are dotted module paths in execution order: ``modules[0]`` is the entry module whose
    input is the block's input (the prefix cache hooks there).
    """

    index: int
    name: str
    modules: tuple[str, ...]
    param_names: tuple[str, ...]
    num_params: int


@dataclass(frozen=True)
class Partition(Sequence[Block]):
    """Every parameter of a model in exactly one of: stem, block i, head. Behaves as the list of blocks."""

    blocks: tuple[Block, ...]
    stem: tuple[str, ...]
    head: tuple[str, ...]
    head_module: str | None
    source: str  # "timm", "hf", "torchvision", "generic", "user"

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, i):  # type: ignore[override]
        return self.blocks[i]

    def __iter__(self) -> Iterator[Block]:
        return iter(self.blocks)

    @property
    def names(self) -> tuple[str, ...]:
        """The readable block names, in order."""
        return tuple(b.name for b in self.blocks)

    def owner(self) -> dict[str, int | str]:
        """Map every parameter name to its block index, or to ``"stem"`` / ``"head"``."""
        out: dict[str, int | str] = {n: "stem" for n in self.stem}
        out.update({n: "head" for n in self.head})
        for b in self.blocks:
            out.update({n: b.index for n in b.param_names})
        return out


Assignment = dict[str, Hashable]  # param name -> _STEM | _HEAD | sortable block key | None (unassigned)


def discover_blocks(
    model: nn.Module,
    *,
    granularity: str = "block",
    blocks: str | Sequence[str | Sequence[str]] | None = None,
) -> Partition:
    """Split ``model`` into stem / ordered blocks / head so SubTuning can pick which blocks to train."""
    if granularity not in GRANULARITIES:
        raise ConfigError(f"The 'granularity' parameter of discover_blocks must be one of {GRANULARITIES}; "
                          f"got {granularity!r} instead.")
    coarse = granularity == "stage"
    if blocks is not None:
        return _build(model, _from_user(model, blocks), "user")
    tried: list[str] = []
    for source, fn in _SOURCES:
        try:
            assign, note = fn(model, coarse)
        except Exception as exc:  # a source that breaks must not hide the next one
            assign, note = None, f"failed ({type(exc).__name__}: {exc})"
        if assign is not None:
            n = len({k for k in assign.values() if k not in (_STEM, _HEAD, None)})
            if n >= 2:
                part = _build(model, assign, source)
                _LOG.debug("discover_blocks: %s found %d blocks in %s", source, len(part), type(model).__name__)
                return part
            note = f"{note}; found only {n} block(s)"
        _LOG.debug("discover_blocks: %s: %s", source, note)
        tried.append(f"{source}: {note}")
    children = [n for n, _ in model.named_children()][:8]
    raise BlockDiscoveryError(
        f"Could not discover at least 2 blocks in {type(model).__name__}. Tried: " + "; ".join(tried) + ". "
        f"Name them yourself: discover_blocks(model, blocks=[...module names...]) or a regex such as "
        f"blocks=r'^layers\\.(\\d+)' (a capture group keys the block). Top-level children: {children}."
    )


discover = discover_blocks


def find_head(model: nn.Module, *, last_linear: bool = True) -> tuple[str, ...]:
    """Names of the classifier module(s): timm's ``pretrained_cfg['classifier']``, a known name, or the last Linear."""
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    cls = cfg.get("classifier") if isinstance(cfg, dict) else None
    if cls:
        found = tuple(n for n in ((cls,) if isinstance(cls, str) else tuple(cls)) if _has_params(model, n))
        if found:
            return found
    children = dict(model.named_children())
    for name in _HEAD_NAMES:
        mod = children.get(name)
        if mod is None or not _has_params(model, name):
            continue
        if isinstance(mod, nn.Linear):
            return (name,)
        linears = [f"{name}.{n}" for n, m in mod.named_modules() if n and isinstance(m, nn.Linear)]
        return (linears[-1] if linears else name,)  # e.g. a 1x1-conv classifier
    if last_linear:
        linears = [n for n, m in model.named_modules() if n and isinstance(m, nn.Linear)]
        if linears:
            return (linears[-1],)
    return ()


# --------------------------------------------------------------------------------------------- sources


def _from_timm(model: nn.Module, coarse: bool) -> tuple[Assignment | None, str]:
    if not callable(getattr(model, "group_matcher", None)):
        return None, "no group_matcher"
    from timm.models import group_parameters

    matcher = model.group_matcher(coarse=coarse)
    lid_of = group_parameters(model, matcher, reverse=True)
    unmatched = _unmatched_fn(matcher)
    head = find_head(model, last_linear=False)
    names = [n for n, _ in model.named_parameters()]
    stem_lid = 0
    if isinstance(matcher, dict):
        stem_res = _compile_spec(matcher.get("stem"))
        if not any(lid_of[n] == 0 and any(r.match(n) for r in stem_res) for n in names):
            stem_lid = -1  # the stem regex matched nothing: group 0 is a block
    assign: Assignment = {}
    for n in names:
        if _under(n, head):
            assign[n] = _HEAD
        elif unmatched(n):
            assign[n] = None
        else:
            assign[n] = _STEM if lid_of[n] == stem_lid else lid_of[n]
    return assign, f"group_matcher(coarse={coarse})"


def _from_hf(model: nn.Module, coarse: bool) -> tuple[Assignment | None, str]:
    if not any(_is_hf(m) for m in model.modules()):
        return None, "no transformers PreTrainedModel inside"
    stacks = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.ModuleList) and _HF_STACK.search(n)]
    stacks = [(n, m) for n, m in stacks if len(m) >= 1 and _has_params(model, n)]
    if not stacks:
        return None, "no ModuleList named layer/layers/h/block(s)"
    path, stack = max(stacks, key=lambda s: sum(p.numel() for p in s[1].parameters()))
    prefixes = {f"{path}.{child}": i for i, (child, _) in enumerate(stack.named_children())}
    head = find_head(model, last_linear=False)
    return _assign_prefixes(model, prefixes, head), f"layer stack {path!r}"


def _from_torchvision(model: nn.Module, coarse: bool) -> tuple[Assignment | None, str]:
    if not type(model).__module__.startswith("torchvision."):
        return None, "not a torchvision model"
    kids = dict(model.named_children())
    prefixes: dict[str, Hashable] = {}
    if all(f"layer{i}" in kids for i in range(1, 5)):  # ResNet / ResNeXt / WideResNet
        for i in range(1, 5):
            for j, (child, _) in enumerate(kids[f"layer{i}"].named_children()):
                prefixes[f"layer{i}.{child}"] = (i,) if coarse else (i, j)
    elif isinstance(getattr(kids.get("encoder"), "layers", None), nn.Sequential):  # VisionTransformer
        for j, (child, _) in enumerate(kids["encoder"].layers.named_children()):
            prefixes[f"encoder.layers.{child}"] = j
    elif isinstance(kids.get("features"), nn.Sequential):  # ConvNeXt, EfficientNet, MobileNet, Swin, DenseNet
        prefixes = _features_prefixes(kids["features"], coarse)
    else:
        return None, f"{type(model).__name__} is not a known torchvision family"
    return _assign_prefixes(model, prefixes, find_head(model)), f"{type(model).__name__} layout"


def _features_prefixes(features: nn.Sequential, coarse: bool) -> dict[str, Hashable]:
    """``features.0`` is the stem; stages of repeated blocks (or flat blocks) follow; transitions join a block."""
    items = list(features.named_children())

    def is_stage(m: nn.Module) -> bool:
        kinds = {type(c) for c in m.children()}
        return type(m) is nn.Sequential and len(kinds) == 1 and not _is_torch_builtin(next(iter(kinds)))

    staged = any(is_stage(m) for _, m in items[1:])
    prefixes: dict[str, Hashable] = {}
    pending: list[str] = []  # transitions (downsample, norm) join the next block; after the last: the last one
    stage, prev_out = -1, object()
    for idx, (name, mod) in enumerate(items):
        path = f"features.{name}"
        if idx == 0 or not any(True for _ in mod.parameters()):
            continue  # the stem (left unassigned: nothing precedes it) or a parameter-free op
        if staged and is_stage(mod):
            units = [(f"{path}.{c}", (idx,) if coarse else (idx, j)) for j, (c, _) in enumerate(mod.named_children())]
        elif not staged and not isinstance(mod, nn.Sequential) and not _is_torch_builtin(type(mod)):
            out = getattr(mod, "out_channels", None)
            stage += 1 if (out is None or out != prev_out) else 0
            prev_out = out
            units = [(path, (stage,) if coarse else (idx,))]
        else:
            pending.append(path)
            continue
        for p in pending:
            prefixes[p] = units[0][1]
        pending = []
        prefixes.update(units)
    return prefixes  # what is still pending stays unassigned, so _build puts it in the last block


def _from_generic(model: nn.Module, coarse: bool) -> tuple[Assignment | None, str]:
    best: tuple[int, int, list[str]] | None = None
    for path, mod in model.named_modules():
        if not isinstance(mod, (nn.ModuleList, nn.Sequential)):
            continue
        run: list[tuple[str, nn.Module]] = []
        for child, sub in [*mod.named_children(), ("", None)]:
            size = sum(p.numel() for p in sub.parameters()) if sub is not None else 0
            if run and size and type(sub) is type(run[-1][1]):
                run.append((child, sub))
                continue
            if len(run) >= 2:
                score = (len(run), sum(p.numel() for _, m in run for p in m.parameters()))
                if best is None or score > best[:2]:
                    best = (*score, [f"{path}.{c}" if path else c for c, _ in run])
            run = [(child, sub)] if size else []
    if best is None:
        return None, "no run of >= 2 repeated children with parameters"
    prefixes = {p: i for i, p in enumerate(best[2])}
    names = [n for n, _ in model.named_parameters()]
    last = max(i for i, n in enumerate(names) if _under(n, best[2]))
    after = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n and not _under(n, best[2])
             and any(_under(p, (n,)) for p in names[last + 1:])]
    if not after:  # no Linear after the run: the last module with parameters after it
        after = [n.rsplit(".", 1)[0] for n in names[last + 1:] if "." in n][-1:]
    parent = best[2][0].rpartition(".")[0]
    return _assign_prefixes(model, prefixes, tuple(after[-1:])), f"{len(best[2])} repeated children of {parent!r}"


def _from_user(model: nn.Module, spec: str | Sequence[str | Sequence[str]]) -> Assignment:
    """Blocks named by the user: a list of module names (or lists of names), or a regex over module names."""
    modules = dict(model.named_modules())
    groups: dict[Hashable, list[str]] = {}
    if isinstance(spec, str):
        try:
            rx = re.compile(spec)
        except re.error as exc:
            raise BlockDiscoveryError(f"blocks={spec!r} is not a valid regular expression: {exc}.") from exc
        matched: list[str] = []
        for name in modules:  # pre-order: a parent comes before its children, so the outermost match wins
            m = (rx.match(name) if rx.groups else rx.fullmatch(name)) if name else None
            if m and not _under(name, matched):
                matched.append(name)
                groups.setdefault(m.groups() if rx.groups else name, []).append(name)
        if not groups:
            raise BlockDiscoveryError(f"blocks={spec!r} matched no module name of {type(model).__name__}; "
                                      f"names look like {[n for n in modules if n][:6]}.")
    elif isinstance(spec, Sequence) and spec:
        for i, item in enumerate(spec):
            group = [item] if isinstance(item, str) else list(item)
            for name in group:
                if not isinstance(name, str) or name not in modules or not name:
                    close = difflib.get_close_matches(str(name), [n for n in modules if n], n=3)
                    raise BlockDiscoveryError(f"blocks= names a module {name!r} that {type(model).__name__} does "
                                              f"not have; close names: {close}. List them with model.named_modules().")
            groups[i] = group
    else:
        raise BlockDiscoveryError(f"blocks= must be a non-empty list of module names or a regex string; got {spec!r}.")
    owner: dict[str, Hashable] = {}
    names = [n for n, _ in model.named_parameters()]
    for key, mods in groups.items():
        hit = [n for n in names if _under(n, mods)]
        if not hit:
            raise BlockDiscoveryError(f"blocks= entry {mods} has no parameters; a block must hold some weights.")
        for n in hit:
            if n in owner:
                raise BlockDiscoveryError(f"blocks= entries overlap: parameter {n!r} is in {owner[n]!r} and {mods}.")
            owner[n] = key
    order = {k: i for i, k in enumerate(dict.fromkeys(owner[n] for n in names if n in owner))}
    heads = find_head(model, last_linear=not _is_hf(model))
    head = tuple(h for h in heads if not any(_under(n, (h,)) for n in owner))
    return {n: order[owner[n]] if n in owner else (_HEAD if _under(n, head) else _STEM) for n in names}


_SOURCES: tuple[tuple[str, Callable[[nn.Module, bool], tuple[Assignment | None, str]]], ...] = (
    ("timm", _from_timm), ("hf", _from_hf), ("torchvision", _from_torchvision), ("generic", _from_generic))


# --------------------------------------------------------------------------------------------- helpers


def _build(model: nn.Module, assign: Assignment, source: str) -> Partition:
    """Resolve unassigned parameters (join the nearest earlier block) and turn keys into ordered Blocks."""
    params = dict(model.named_parameters())
    names = list(params)
    current: Hashable = _STEM
    for n in names:
        key = assign.get(n)
        if key is None:
            assign[n] = current
        elif key != _HEAD:
            current = key
    keys = sorted({k for k in assign.values() if k not in (_STEM, _HEAD)}, key=_sort_key)
    index = {k: i for i, k in enumerate(keys)}
    members: list[list[str]] = [[] for _ in keys]
    for n in names:
        if assign[n] not in (_STEM, _HEAD):
            members[index[assign[n]]].append(n)
    totals = Counter(p for n in names for p in _prefixes(n))
    blocks, seen = [], Counter()
    for i, group in enumerate(members):
        mods = _cover(group, totals)
        main = max(mods, key=lambda m: sum(params[n].numel() for n in group if _under(n, (m,))), default=group[0])
        seen[main] += 1
        name = main if seen[main] == 1 else f"{main}#{seen[main]}"
        blocks.append(Block(i, name, mods, tuple(group), sum(params[n].numel() for n in group)))
    head = tuple(n for n in names if assign[n] == _HEAD)
    head_mods = _cover(list(head), totals)
    return Partition(tuple(blocks), tuple(n for n in names if assign[n] == _STEM), head,
                     head_mods[0] if head_mods else None, source)


def _assign_prefixes(model: nn.Module, prefixes: dict[str, Hashable], head: Sequence[str]) -> Assignment:
    """Each parameter gets the key of its longest prefix in ``prefixes``; the head wins; the rest is unassigned."""
    out: Assignment = {}
    for n, _ in model.named_parameters():
        if _under(n, head):
            out[n] = _HEAD
            continue
        out[n] = next((prefixes[p] for p in reversed(_prefixes(n)) if p in prefixes), None)
    return out


def _cover(group: list[str], totals: Counter) -> tuple[str, ...]:
    """The minimal module paths that hold exactly these parameters, in registration (≈ execution) order."""
    inside = Counter(p for n in group for p in _prefixes(n))
    out: dict[str, None] = {}
    for n in group:
        for p in _prefixes(n)[1:]:  # skip the root ''
            if inside[p] == totals[p]:
                out[p] = None
                break
    return tuple(out)


def _prefixes(name: str) -> list[str]:
    """'a.b.w' -> ['', 'a', 'a.b'] (the modules that own ``name``, root first)."""
    parts = name.split(".")[:-1]
    return [""] + [".".join(parts[: i + 1]) for i in range(len(parts))]


def _under(name: str, prefixes: Sequence[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _sort_key(key: Hashable) -> tuple:
    return tuple(key) if isinstance(key, tuple) else (key,)


def _has_params(model: nn.Module, name: str) -> bool:
    try:
        return any(True for _ in model.get_submodule(name).parameters())
    except AttributeError:
        return False


def _is_hf(module: nn.Module) -> bool:
    return any(c.__name__ == "PreTrainedModel" and c.__module__.startswith("transformers")
               for c in type(module).__mro__)


def _is_torch_builtin(cls: type) -> bool:
    return cls.__module__.startswith("torch.nn")


def _compile_spec(spec: Any) -> list[re.Pattern]:
    if spec is None:
        return []
    if isinstance(spec, (tuple, list)):
        return [re.compile(s[0]) for s in spec]
    return [re.compile(spec)]


def _unmatched_fn(matcher: dict | Callable) -> Callable[[str], bool]:
    """True for parameters the timm matcher leaves unmatched (timm puts them in a last group with the head)."""
    if isinstance(matcher, dict):
        regexes = [r for spec in matcher.values() for r in _compile_spec(spec)]
        return lambda n: not any(r.match(n) for r in regexes)

    def unmatched(n: str) -> bool:
        ordinal = matcher(n)
        first = ordinal[0] if isinstance(ordinal, (tuple, list)) else ordinal
        return isinstance(first, (int, float)) and math.isinf(first)

    return unmatched
