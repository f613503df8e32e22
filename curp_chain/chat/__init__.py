"""Chat: the LangChain chat model, its messages, structured output, system message and tools."""
