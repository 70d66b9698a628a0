"""The planner: a digital twin of a training step and of a whole run."""
