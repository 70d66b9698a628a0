"""gigafactory: plan, train and serve Grok on a 100,000-GPU gigafactory of compute."""

__version__ = "0.1.0"
