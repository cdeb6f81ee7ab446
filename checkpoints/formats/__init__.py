"""Checkpoint formats: each is a reader (whole TP1 tensors by canonical key) and a writer (takes
whole tensors and lays them out in that format), so any format converts to any other."""
