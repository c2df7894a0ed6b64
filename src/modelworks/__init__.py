"""Modelworks: a self-hosted AI model service with OpenAI- and Azure-OpenAI-compatible APIs."""

__version__ = "0.1.0"
