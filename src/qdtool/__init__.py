"""qdtool: turn an LLM into a question decomposer."""

__version__ = "0.1.0"
