"""The seams: the history store and soft-prompt backend protocols, and history items."""
