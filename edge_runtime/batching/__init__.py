"""Continuous batching: several generations decoded together on one llama.cpp context."""

from edge_runtime.batching.engine import BatchEngine, EngineStats
from edge_runtime.batching.slots import Slot, pick_slot

__all__ = ["BatchEngine", "EngineStats", "Slot", "pick_slot"]
