"""The built-in tiny Nemotron 3 Nano Omni: real architecture at tiny size, random weights, generated offline."""

from omni3_import.tiny_model.build import BUILTIN_NAME, TINY_RECORD, build_tiny_omni

__all__ = ["BUILTIN_NAME", "TINY_RECORD", "build_tiny_omni"]
