"""trl-harness: experiment tracking and evaluation around Hugging Face TRL."""
__version__ = "0.1.0"
