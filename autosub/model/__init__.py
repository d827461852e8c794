"""What a network is to autosub.

``blocks`` (discovery + the user's override: where a "block" is decided), ``heads`` (fresh classifiers),
``subtune`` (freezing, train/eval modes, parameter groups), ``splitting`` (capture / replay at a block boundary),
``cost`` (FLOP share a selection adds at inference), ``fingerprint`` (trunk and data identities), ``text``
(TextClassifier for HF encoders), ``zoo`` (real pretrained weights that load offline).
"""
__all__ = ["blocks", "cost", "fingerprint", "heads", "splitting", "subtune", "text", "zoo"]
