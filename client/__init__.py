"""Talks to any OpenAI-compatible completion server (slipstream, llama.cpp, vLLM, FauxPilot).
Imports nothing from server or eval."""

from client.api import APIError, AsyncClient, Client

__all__ = ["APIError", "AsyncClient", "Client"]
