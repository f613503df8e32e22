"""LLM backends for curp-chain that accept soft prompts: llama.cpp and transformers.

Import the backend modules directly (``curp_chain_integrations.llamacpp``,
``curp_chain_integrations.hf``); each needs its own optional dependencies.
"""
