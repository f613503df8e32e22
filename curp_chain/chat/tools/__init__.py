"""Tool calling: tool specs, their prompt, the relevance gate, constrained decoding, streaming."""
