"""Training CURP: the codebook (stage 1) and the alignment with the frozen LLM (stage 2)."""
