"""Compatibility layers that let the same training code run where Colossal-AI expects a GPU."""

from .cpu_accelerator import activate, is_active

__all__ = ["activate", "is_active"]
