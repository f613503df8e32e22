"""LangChain and LangGraph adapters: agents, the LangGraph store, message history."""
