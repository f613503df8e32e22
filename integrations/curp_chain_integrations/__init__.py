"""LLM backends for curp-chain that accept soft prompts: llama.cpp and transformers.

Import the backend modules directly (``curp_chain_integrations.backends.llamacpp``,
``curp_chain_integrations.backends.hf``); each needs its own optional dependencies.
"""
