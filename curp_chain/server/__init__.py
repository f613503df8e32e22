"""`curp serve`: the chat model and the history store over an OpenAI-compatible HTTP API.

Modules, one job each: ``settings`` (options, from the command line or ``CURP_SERVE_*``),
``tenants`` (API keys and tenant-scoped user ids), ``auth`` (the key check on every
``/v1/`` request), ``schemas`` (OpenAI's request shapes), ``messages`` (OpenAI messages and
settings to ``CurpChatModel``'s), ``replies`` (its chunks to OpenAI's response objects),
``errors`` (OpenAI's error shape), ``limits`` (body size and admission), ``metrics``
(Prometheus), ``state`` (what the routes share, and the model they serve), the routes
(``completions``, ``history``, ``health``), ``app`` (the application factory) and
``runner`` (uvicorn). Only ``settings`` and ``tenants`` import nothing beyond pydantic and
the core's errors, so the command line is built without the server's extra installed.
"""
