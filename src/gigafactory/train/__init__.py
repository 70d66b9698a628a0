"""The trainer: Grok-architecture models from a ModelSpec, trained with torch.distributed.

model (what) ≠ parallelize (how it is spread over ranks) ≠ loop (what happens each step);
data, checkpoint, metrics and export are separate components the loop composes.
"""
