"""shoal: run many LLM agents together in production."""
__version__ = "0.1.0"
