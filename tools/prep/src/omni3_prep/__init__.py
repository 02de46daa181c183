"""omni3-prep: build and validate Energon datasets for Nemotron 3 Nano Omni SFT."""

__version__ = "0.1.0"
