"""Model zoo."""
from __future__ import annotations

from fedsim.models.zoo import MODELS, CharLSTM, build_model, seeded

__all__ = ["MODELS", "CharLSTM", "build_model", "seeded"]
