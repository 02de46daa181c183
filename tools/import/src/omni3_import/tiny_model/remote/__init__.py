"""Source files copied verbatim into every tiny Omni checkpoint and loaded there with trust_remote_code.

They import only transformers (and torch/numpy/PIL), never omni3, so a checkpoint stays usable without it.
"""
