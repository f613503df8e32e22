"""The torch model: config, quantizer, user model, encoder, style features, checkpoints."""
