"""LLM backends that take soft prompts: llama.cpp, transformers, vLLM."""
