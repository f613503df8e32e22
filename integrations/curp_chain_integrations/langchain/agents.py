"""CurpChatModel in LangChain agents: the user id from the agent's runtime context.

.. code-block:: python

    from dataclasses import dataclass
    from langchain.agents import create_agent
    from curp_chain_integrations.langchain.agents import CurpUserMiddleware

    @dataclass
    class UserContext:
        user_id: str

    agent = create_agent(
        model, tools, context_schema=UserContext, middleware=[CurpUserMiddleware()]
    )
    agent.invoke({"messages": [("user", "Plans for Saturday?")]},
                 context=UserContext(user_id="alice"))

Without the middleware, ``config={"configurable": {"user_id": "alice"}}`` personalizes the
agent's model calls too (CurpChatModel reads it from the config of the graph node it runs in).
Needs ``pip install 'curp-chain-integrations[langgraph]'``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from curp_chain.errors import CurpError, MissingDependencyError

try:
    from langchain.agents.middleware import AgentMiddleware, ModelRequest, ModelResponse
except ImportError:  # pragma: no cover - depends on the environment
    raise MissingDependencyError(
        "the agent middleware needs langchain and langgraph; run: "
        "pip install 'curp-chain-integrations[langgraph]'"
    ) from None


def context_user_id(context: Any, key: str = "user_id") -> str | None:
    """``key`` of an agent's runtime context: a dict / TypedDict, a dataclass or a Pydantic
    model; None when the context has no such value."""
    if context is None:
        return None
    value = context.get(key) if isinstance(context, Mapping) else getattr(context, key, None)
    if value is not None and not isinstance(value, str):
        raise CurpError(f"the runtime context's {key!r} must be a string, not {value!r}")
    return value


class CurpUserMiddleware(AgentMiddleware[Any, Any]):
    """Personalizes every model call of an agent for the user in its runtime context.

    Args:
        key: the context field holding the user id.
        required: refuse a run whose context has no user id (instead of an unpersonalized
            reply, flagged in ``response_metadata["curp"]``).
    """

    def __init__(self, key: str = "user_id", *, required: bool = False):
        super().__init__()
        self.key = key
        self.required = required

    def _personalized(self, request: ModelRequest) -> ModelRequest:
        user_id = context_user_id(request.runtime.context, self.key)
        if user_id is None:
            if self.required:
                raise CurpError(f"the agent's runtime context has no {self.key!r}")
            return request
        # model_settings reach the model's bind_tools / bind as keyword arguments.
        return request.override(model_settings={**request.model_settings, "user_id": user_id})

    def wrap_model_call(
        self, request: ModelRequest, handler: Callable[[ModelRequest], ModelResponse]
    ) -> ModelResponse:
        return handler(self._personalized(request))

    async def awrap_model_call(
        self,
        request: ModelRequest,
        handler: Callable[[ModelRequest], Awaitable[ModelResponse]],
    ) -> ModelResponse:
        return await handler(self._personalized(request))
