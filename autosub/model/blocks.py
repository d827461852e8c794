"""Block discovery: split a pretrained network into stem / ordered blocks / head.

This is the one place that decides what a "block" is. Sources, in order: timm's ``group_matcher``
(via ``timm.models.group_parameters``), Hugging Face layer stacks, torchvision families, a generic
fallback (the longest run of repeated children), or the user's ``blocks=`` override.

Hugging Face models give every layer stack in registration (= forward) order: an encoder-decoder's encoder
layers then its decoder layers, every tower of a multimodal model, every stage's layers of a hierarchical
vision model (ConvNeXt, ResNet, Swin), a wrapped timm model's own groups. ALBERT's shared layer groups are one
block each; with a single shared group discovery refuses and says which ``blocks=`` to pass.

One rule for what is neither a block nor the classifier, whatever the source: a parameter that the
source leaves unassigned joins the nearest block registered before it (the stem if none) — the
generalisation of timm's ``MATCH_PREV_GROUP``. So a final norm, a neck (``conv_head``), a pooler or the
norm inside a head container joins the *last block*, and the head is only the final classifier module
(``fc``, ``head``, ``classifier[-1]``, ...), whose input is the pooled features. With ``blocks=`` every
parameter outside the listed modules and the head is frozen context (``Partition.stem``); a regex's
parameter-free matches (ReLU, pooling between convolutions) join the block before them (the next if none).
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

__all__ = ["Block", "Partition", "discover", "discover_blocks", "find_head", "is_hf_model", "is_under"]

_LOG = logging.getLogger(__name__)

GRANULARITIES = ("block", "stage")
_STEM, _HEAD = "<stem>", "<head>"  # sentinel keys; block keys are never strings
_HEAD_NAMES = ("fc", "heads", "head", "classifier", "score", "lm_head", "qa_outputs")
_LAYER_LIKE = re.compile(r"(?:^|\.)(?:layers?|h|blocks?|stages?|resblocks|levels)$")


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


Assignment = dict[str, Hashable]  # param name -> _STEM | _HEAD | sortable block key | _Joins | None (unassigned)


@dataclass(frozen=True)
class _Joins:
    """A parameter a source sends to another block's key out of registration order (it moves no cursor)."""

    key: Hashable


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
        assign, weightless = _from_user(model, blocks)
        return _build(model, assign, "user", weightless)
    tried: list[str] = []
    for source, fn in _SOURCES:
        try:
            assign, note = fn(model, coarse)
        except BlockDiscoveryError:  # a source that refuses on purpose (a weight-shared stack) says why
            raise
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
        f"blocks=r'{_suggest_regex(model)}' (a capture group keys the block; parameter-free matches such as "
        f"ReLU or pooling join the block before them). Top-level children: {children}."
    )


def _suggest_regex(model: nn.Module) -> str:
    """A regex over the children of the list with the most weighted children (the likeliest trunk)."""
    best, path = 1, "layers"
    for name, mod in model.named_modules():
        if isinstance(mod, (nn.ModuleList, nn.Sequential)):
            n = sum(1 for c in mod.children() if next(c.parameters(), None) is not None)
            if n > best:
                best, path = n, name
    return r"^(\d+)" if not path else "^" + re.escape(path) + r"\.(\d+)"


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
        if is_under(n, head):
            assign[n] = _HEAD
        elif unmatched(n):
            assign[n] = None
        else:
            assign[n] = _STEM if lid_of[n] == stem_lid else lid_of[n]
    return assign, f"group_matcher(coarse={coarse})"


def _from_hf(model: nn.Module, coarse: bool) -> tuple[Assignment | None, str]:
    """Every layer stack of a Hugging Face model, in registration (forward) order; stages are split into blocks.

    A *stack* is a ModuleList of >= 2 layers of one class (or a ModuleList/Sequential with a layer-like
    name such as ``layers`` / ``block`` / ``stages``), outside any other stack: both stacks of an
    encoder-decoder, every tower of a multimodal model. Equal-length sibling lists are zipped (XLM keeps its
    attentions, norms and FFNs in parallel lists: layer i is the i-th of each). A stack child whose bulk is a
    nested list of composite layers is a *stage* (HF ConvNeXt ``encoder.stages.i.layers``, Swin
    ``encoder.layers.i.blocks``): with ``granularity='block'`` its layers are the blocks, and the rest of the
    stage (a downsampling layer, a norm) joins the stage's layer registered nearest before it (the first if none).
    """
    if not any(is_hf_model(m) for m in model.modules()):
        return None, "no transformers PreTrainedModel inside"
    sizes = _sizes(model)
    stacks, opaque = _hf_stacks(model, sizes, coarse)
    shared = _shared_layer_groups(model) + opaque
    if not stacks:
        return None, "no layer stack (a ModuleList of >= 2 layers of one class)"
    order = {n: i for i, (n, _) in enumerate(model.named_parameters())}
    prefixes: dict[str, Hashable] = {}
    staged: list[tuple[tuple[str, ...], list[tuple[int, Hashable]]]] = []  # (unit, [(first param, key)])
    count = 0
    for stack in stacks:
        for unit in stack:
            split = not coarse and not is_under(unit[0], shared)
            bodies = [b for p in unit if (b := _stage_body(model, p, sizes))] if split else []
            layers = [k for b in bodies for k, _ in _param_children(model.get_submodule(b), b, sizes)]
            if not layers:
                prefixes.update({p: (count,) for p in unit})
                count += 1
                continue
            starts = []
            for path in sorted(layers, key=lambda q: _first_param(q, order)):
                prefixes[path] = (count,)
                starts.append((_first_param(path, order), (count,)))
                count += 1
            staged.append((unit, starts))
    assign = _assign_prefixes(model, prefixes, find_head(model, last_linear=False))
    for unit, starts in staged:  # the rest of a stage joins its layer registered nearest before (else the first)
        for n in order:
            if assign[n] is None and is_under(n, unit):
                assign[n] = max((s for s in starts if s[0] < order[n]), default=starts[0])[1]
    assign.update(_embeddings_before_stacks(model, stacks, assign, order))
    paths = [s[0][0].rpartition(".")[0] for s in stacks]
    return assign, f"{len(stacks)} layer stack(s) {paths[:4]}{' ...' if len(paths) > 4 else ''}"


def _embeddings_before_stacks(model: nn.Module, stacks: list[list[tuple[str, ...]]], assign: Assignment,
                              order: dict[str, int]) -> Assignment:
    """An embedding module registered after a stack in the stack's parent runs before it (BART's
    ``encoder.layernorm_embedding``): it joins the block before the stack's first, so no tuned weight sits in
    the frozen prefix the cache replays. Returns those parameters as explicit joins."""
    late: Assignment = {}
    for stack in stacks:
        parent = stack[0][0].rpartition(".")[0].rpartition(".")[0]
        paths = [p for unit in stack for p in unit]
        end = max(i for n, i in order.items() if is_under(n, paths))
        first = assign[min((n for n in order if is_under(n, paths)), key=order.__getitem__)]
        before = (first[0] - 1,) if isinstance(first, tuple) and first[0] > 0 else _STEM
        pre = f"{parent}." if parent else ""
        for child, _ in model.get_submodule(parent).named_children():
            if "embed" in child.lower():
                for n in order:
                    if order[n] > end and assign[n] is None and is_under(n, (pre + child,)):
                        late[n] = _Joins(before)
    return late


def _hf_stacks(model: nn.Module, sizes: dict[str, int], coarse: bool) -> tuple[list[list[tuple[str, ...]]], list[str]]:
    """The outermost layer stacks in registration order, each a list of units (a unit: 1 path, or zipped paths).

    A timm model inside (``TimmWrapperModel.timm_model``, a detector's backbone) is one stack whose units are its
    own ``group_matcher`` groups; its path comes back in the second list (its units are never split further).
    """
    found: list[tuple[str, list[str]]] = []  # (path, param-holding child paths)
    plain: list[tuple[str, list[str]]] = []  # ModuleLists of built-in modules: zipped in, never stacks alone
    timm: list[tuple[str, list[tuple[str, ...]]]] = []
    for path, mod in model.named_modules():
        if not path or is_under(path, [p for p, _ in found] + [p for p, _ in timm]):
            continue
        if callable(getattr(mod, "group_matcher", None)) and not is_hf_model(mod):
            units = _timm_units(mod, path, coarse)
            if units:
                timm.append((path, units))
                continue
        if not isinstance(mod, (nn.ModuleList, nn.Sequential)):
            continue
        kids = _param_children(mod, path, sizes)
        if _is_stack(mod, path, kids, sizes):
            found.append((path, [p for p, _ in kids]))
        elif isinstance(mod, nn.ModuleList) and kids and all(_is_torch_builtin(type(m)) for _, m in kids):
            plain.append((path, [p for p, _ in kids]))
    groups: dict[tuple[str, int], list[tuple[str, list[str]]]] = {}
    for path, kids in found:
        zippable = isinstance(model.get_submodule(path), nn.ModuleList) and len(kids) >= 2
        key = (path.rpartition(".")[0], len(kids)) if zippable else (path, -1)
        groups.setdefault(key, []).append((path, kids))
    stacks = []
    for (parent, length), members in groups.items():
        if length >= 2:  # equal-length sibling lists run in lockstep: zip them, norms included
            members += [(p, k) for p, k in plain if p.rpartition(".")[0] == parent and len(k) == length]
        stacks.append([tuple(kids[i] for _, kids in members) for i in range(len(members[0][1]))])
    index = {p: i for i, (p, _) in enumerate(model.named_modules())}
    for stack in stacks:
        for i, unit in enumerate(stack):
            stack[i] = tuple(sorted(unit, key=index.__getitem__))
    stacks += [units for _, units in timm]
    # a module registered twice shows its weights under the first path only: drop what holds none here
    stacks = [s for s in ([u for u in (tuple(p for p in unit if sizes.get(p)) for unit in stack) if u]
                          for stack in stacks) if s]
    return sorted(stacks, key=lambda s: index[s[0][0]]), [p for p, _ in timm]


def _timm_units(mod: nn.Module, path: str, coarse: bool) -> list[tuple[str, ...]]:
    """The blocks timm's ``group_matcher`` gives a timm model at ``path``, each as the module paths covering it."""
    try:
        assign, _ = _from_timm(mod, coarse)
    except Exception:  # a timm model whose matcher breaks is searched like any other module
        return []
    keys = sorted({k for k in assign.values() if k not in (_STEM, _HEAD, None)}, key=_sort_key)
    totals = Counter(p for n in assign for p in _prefixes(n))
    units = [_cover([n for n, k in assign.items() if k == key], totals) for key in keys]
    return [tuple(f"{path}.{m}" for m in unit) for unit in units if unit]


def _is_stack(mod: nn.Module, path: str, kids: list[tuple[str, nn.Module]], sizes: dict[str, int]) -> bool:
    """A list of >= 2 layers of one class, or a list/Sequential with a layer-like name holding only layers."""
    if not kids or not all(_is_layer(m, p, sizes) for p, m in kids):
        return False
    if isinstance(mod, nn.ModuleList) and len(kids) >= 2 and len({type(m) for _, m in kids}) == 1:
        return True
    return bool(_LAYER_LIKE.search(path))


def _is_layer(mod: nn.Module, path: str, sizes: dict[str, int]) -> bool:
    """A module of a model's own class (not a torch.nn built-in), or a list that is itself a stack of those."""
    if isinstance(mod, (nn.ModuleList, nn.Sequential)):
        kids = _param_children(mod, path, sizes)
        return bool(kids) and len({type(m) for _, m in kids}) == 1 and all(_is_layer(m, p, sizes) for p, m in kids)
    return not _is_torch_builtin(type(mod))


def _stage_body(model: nn.Module, path: str, sizes: dict[str, int]) -> str | None:
    """The nested list of composite layers that holds most of the stage at ``path`` (its blocks), if any."""
    stage = model.get_submodule(path)
    if isinstance(stage, (nn.ModuleList, nn.Sequential)):
        return path  # a stage that is itself a list of layers (Funnel, Florence-2)
    best: tuple[int, str] | None = None
    for sub, mod in stage.named_modules(prefix=path):
        if sub == path or not isinstance(mod, (nn.ModuleList, nn.Sequential)) or 2 * sizes.get(sub, 0) < sizes[path]:
            continue
        kids = _param_children(mod, sub, sizes)
        if (kids and len({type(m) for _, m in kids}) == 1 and all(_is_layer(m, p, sizes) for p, m in kids)
                and all(_is_composite(m) for _, m in kids) and (best is None or sizes[sub] > best[0])):
            best = (sizes[sub], sub)
    return best[1] if best else None


def _is_composite(mod: nn.Module) -> bool:
    """A layer with >= 2 modules that own weights (a ConvNeXt or Swin layer), not a wrapped convolution."""
    return sum(1 for m in mod.modules() if next(m.parameters(recurse=False), None) is not None) >= 2


def _first_param(path: str, order: dict[str, int]) -> int:
    """Registration index of the first parameter under ``path``."""
    return min(i for n, i in order.items() if is_under(n, (path,)))


def _shared_layer_groups(model: nn.Module) -> list[str]:
    """Paths of HF models that reuse layer groups across depth (ALBERT); refuses those with a single group.

    ALBERT runs ``num_hidden_layers`` layers with ``num_hidden_groups`` weight sets, group g serving a run of
    consecutive layers: with >= 2 groups each group is one block (the prefix cache hooks its first call), with
    one group nothing distinct is left to tune block by block.
    """
    found = []
    for path, mod in model.named_modules():
        cfg = getattr(mod, "config", None) if is_hf_model(mod) else None
        groups, layers = getattr(cfg, "num_hidden_groups", None), getattr(cfg, "num_hidden_layers", None)
        if isinstance(groups, int) and isinstance(layers, int) and groups < layers:
            found.append((path, mod, groups, layers))
    shared = [p for p, *_ in found if not any(q != p and is_under(p, (q,)) for q, *_ in found)]
    for path, mod, groups, layers in found:
        if groups < 2 and not any(q != path and is_under(q, (path,)) for q, *_ in found):  # innermost: the base model
            pre = f"{path}." if path else ""
            kids = [f"{pre}{c}" for c, m in mod.named_children() if next(m.parameters(), None) is not None]
            raise BlockDiscoveryError(
                f"{type(mod).__name__} shares one layer group across all {layers} layers (config.num_hidden_groups="
                f"{groups}): its weights form no sequence of distinct blocks to tune one by one. Name the blocks "
                f"yourself, e.g. discover_blocks(model, blocks={kids[:2]}) (the shared encoder is then one block), "
                f"or use a checkpoint with num_hidden_groups >= 2 (each group is then one block).")
    for path, mod, groups, layers in found:
        if path in shared:
            _LOG.info("discover_blocks: %s shares %d layer groups across %d layers; each group is one block.",
                      type(mod).__name__, groups, layers)
    return shared


def _param_children(mod: nn.Module, path: str, sizes: dict[str, int]) -> list[tuple[str, nn.Module]]:
    pre = f"{path}." if path else ""
    return [(f"{pre}{c}", m) for c, m in mod.named_children() if sizes.get(f"{pre}{c}", 0)]


def _sizes(model: nn.Module) -> dict[str, int]:
    """Parameter count under every module path (tied weights counted once, where first registered)."""
    out: Counter = Counter()
    for n, p in model.named_parameters():
        for prefix in _prefixes(n):
            out[prefix] += max(p.numel(), 1)  # an empty tensor still marks its module as weighted
    return out


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
    last = max(i for i, n in enumerate(names) if is_under(n, best[2]))
    after = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n and not is_under(n, best[2])
             and any(is_under(p, (n,)) for p in names[last + 1:])]
    if not after:  # no Linear after the run: the last module with parameters after it
        after = [n.rsplit(".", 1)[0] for n in names[last + 1:] if "." in n][-1:]
    parent = best[2][0].rpartition(".")[0]
    return _assign_prefixes(model, prefixes, tuple(after[-1:])), f"{len(best[2])} repeated children of {parent!r}"


def _from_user(model: nn.Module, spec: str | Sequence[str | Sequence[str]]) -> tuple[Assignment, dict]:
    """Blocks named by the user: a list of module names (or lists of names), or a regex over module names.

    Returns the assignment and, per block key, the parameter-free modules named (listed in a group, or matched
    by a regex: a ReLU or pooling between convolutions joins the block registered before it, the next one if
    none precedes), so they count among the block's modules.
    """
    modules = dict(model.named_modules())
    position = {n: i for i, n in enumerate(modules)}
    names = [n for n, _ in model.named_parameters()]
    heads = find_head(model, last_linear=not is_hf_model(model))
    groups: dict[Hashable, list[str]] = {}
    weightless: dict[Hashable, list[str]] = {}
    if isinstance(spec, str):
        try:
            rx = re.compile(spec)
        except re.error as exc:
            raise BlockDiscoveryError(f"blocks={spec!r} is not a valid regular expression: {exc}.") from exc
        matched: list[str] = []
        for name in modules:  # pre-order: a parent comes before its children, so the outermost match wins
            m = (rx.match(name) if rx.groups else rx.fullmatch(name)) if name else None
            if m and not is_under(name, matched) and not is_under(name, heads):  # a regex never claims the head
                matched.append(name)
                groups.setdefault(m.groups() if rx.groups else name, []).append(name)
        if not groups:
            raise BlockDiscoveryError(f"blocks={spec!r} matched no module name of {type(model).__name__}; "
                                      f"names look like {[n for n in modules if n][:6]}.")
        groups, weightless = _attach_weightless(groups, names, position, spec)
    elif isinstance(spec, Sequence) and spec:
        for i, item in enumerate(spec):
            group = [item] if isinstance(item, str) else list(item)
            for name in group:
                if not isinstance(name, str) or name not in modules or not name:
                    close = difflib.get_close_matches(str(name), [n for n in modules if n], n=3)
                    raise BlockDiscoveryError(f"blocks= names a module {name!r} that {type(model).__name__} does "
                                              f"not have; close names: {close}. List them with model.named_modules().")
            groups[i] = group
            weightless[i] = [name for name in group if not any(is_under(n, (name,)) for n in names)]
    else:
        raise BlockDiscoveryError(f"blocks= must be a non-empty list of module names or a regex string; got {spec!r}.")
    owner: dict[str, Hashable] = {}
    for key, mods in groups.items():
        hit = [n for n in names if is_under(n, mods)]
        if not hit:
            raise BlockDiscoveryError(f"blocks= entry {mods} has no parameters; a block must hold some weights "
                                      f"(group a parameter-free module with a neighbour: [['conv1', 'relu'], ...]).")
        for n in hit:
            if n in owner:
                raise BlockDiscoveryError(f"blocks= entries overlap: parameter {n!r} is in {owner[n]!r} and {mods}.")
            owner[n] = key
    order = {k: i for i, k in enumerate(dict.fromkeys(owner[n] for n in names if n in owner))}
    head = tuple(h for h in heads if not any(is_under(n, (h,)) for n in owner))
    assign = {n: order[owner[n]] if n in owner else (_HEAD if is_under(n, head) else _STEM) for n in names}
    return assign, {order[k]: v for k, v in weightless.items()}


def _attach_weightless(groups: dict[Hashable, list[str]], names: list[str], position: dict[str, int],
                       spec: str) -> tuple[dict[Hashable, list[str]], dict[Hashable, list[str]]]:
    """Fold regex groups without parameters into the weighted group registered before them (else the next)."""
    ordered = sorted(groups, key=lambda k: position[groups[k][0]])
    weighted = [k for k in ordered if any(is_under(n, groups[k]) for n in names)]
    if not weighted:
        raise BlockDiscoveryError(f"blocks={spec!r} matched only modules without parameters ({groups[ordered[0]][:3]} "
                                  f"...); a block must hold some weights.")
    extra: dict[Hashable, list[str]] = {k: [] for k in weighted}
    target = weighted[0]
    for k in ordered:
        if k in extra:
            target = k
        else:
            extra[target].extend(groups[k])
    return {k: groups[k] for k in weighted}, extra


_SOURCES: tuple[tuple[str, Callable[[nn.Module, bool], tuple[Assignment | None, str]]], ...] = (
    ("timm", _from_timm), ("hf", _from_hf), ("torchvision", _from_torchvision), ("generic", _from_generic))


# --------------------------------------------------------------------------------------------- helpers


def _build(model: nn.Module, assign: Assignment, source: str,
           weightless: dict[Hashable, list[str]] | None = None) -> Partition:
    """Resolve unassigned parameters (join the nearest earlier block) and turn keys into ordered Blocks.

    ``weightless`` adds parameter-free module paths (a user's matched ReLU or pooling) to a block's modules.
    A block is named after its largest module among those the source assigned (not what joined it).
    """
    params = dict(model.named_parameters())
    names = list(params)
    joined: set[str] = set()
    current: Hashable = _STEM
    for n in names:
        key = assign.get(n)
        if key is None or isinstance(key, _Joins):
            assign[n] = current if key is None else key.key
            joined.add(n)
        elif key != _HEAD:
            current = key
    keys = sorted({k for k in assign.values() if k not in (_STEM, _HEAD)}, key=_sort_key)
    index = {k: i for i, k in enumerate(keys)}
    members: list[list[str]] = [[] for _ in keys]
    for n in names:
        if assign[n] not in (_STEM, _HEAD):
            members[index[assign[n]]].append(n)
    totals = Counter(p for n in names for p in _prefixes(n))
    position = {p: i for i, (p, _) in enumerate(model.named_modules())} if weightless else {}
    blocks, seen = [], Counter()
    for key, group in zip(keys, members):
        own = [n for n in group if n not in joined]
        main = max(_cover(own, totals), key=lambda m: sum(params[n].numel() for n in own if is_under(n, (m,))))
        mods = _called(model, _cover(group, totals))
        if weightless and weightless.get(key):
            mods = tuple(sorted({*mods, *weightless[key]}, key=position.__getitem__))
        seen[main] += 1
        name = main if seen[main] == 1 else f"{main}#{seen[main]}"
        blocks.append(Block(len(blocks), name, mods, tuple(group), sum(params[n].numel() for n in group)))
    head = tuple(n for n in names if assign[n] == _HEAD)
    head_mods = _cover(list(head), totals)
    return Partition(tuple(blocks), tuple(n for n in names if assign[n] == _STEM), head,
                     head_mods[0] if head_mods else None, source)


def _assign_prefixes(model: nn.Module, prefixes: dict[str, Hashable], head: Sequence[str]) -> Assignment:
    """Each parameter gets the key of its longest prefix in ``prefixes``; the head wins; the rest is unassigned."""
    out: Assignment = {}
    for n, _ in model.named_parameters():
        if is_under(n, head):
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


def _called(model: nn.Module, paths: tuple[str, ...]) -> tuple[str, ...]:
    """Replace a ModuleList / ModuleDict (never called, so its hooks never fire) by its weighted children."""
    out: list[str] = []
    for path in paths:
        mod = model.get_submodule(path)
        if isinstance(mod, (nn.ModuleList, nn.ModuleDict)):
            kids = [f"{path}.{c}" for c, m in mod.named_children() if next(m.parameters(), None) is not None]
            out.extend(_called(model, tuple(kids)))
        else:
            out.append(path)
    return tuple(out)


def _prefixes(name: str) -> list[str]:
    """'a.b.w' -> ['', 'a', 'a.b'] (the modules that own ``name``, root first)."""
    parts = name.split(".")[:-1]
    return [""] + [".".join(parts[: i + 1]) for i in range(len(parts))]


def is_under(name: str, prefixes: Sequence[str]) -> bool:
    """Whether parameter/module ``name`` is one of ``prefixes`` or lies inside one of them."""
    """True when ``name`` is one of ``prefixes`` or lies inside one ('' is the root: everything)."""
    return any(not p or name == p or name.startswith(p + ".") for p in prefixes)


def _sort_key(key: Hashable) -> tuple:
    return tuple(key) if isinstance(key, tuple) else (key,)


def _has_params(model: nn.Module, name: str) -> bool:
    try:
        return any(True for _ in model.get_submodule(name).parameters())
    except AttributeError:
        return False


def is_hf_model(module: nn.Module) -> bool:
    """Whether ``module`` is a Hugging Face ``PreTrainedModel`` (checked by class, without importing transformers)."""
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
