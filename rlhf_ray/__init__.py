"""rlhf-ray: RLHF for whole-page recommendation on Ray."""
__version__ = "0.1.0"
