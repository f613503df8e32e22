"""Personalization: the personalizer, history ingest, conversation memory, inspection."""
