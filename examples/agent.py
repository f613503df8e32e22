"""A LangChain agent with two tools, personalized for two users, fully offline.

    python examples/agent.py

The agent runs on the default local model (SmolLM2-135M-Instruct through llama.cpp). Each
user's history personalizes every model call: CurpUserMiddleware reads the user id from
the agent's runtime context. The tools are bound with tool_choice "auto": a relevance gate
compares the request with each tool and calls the closest one that reaches the threshold
and was not called yet for this request (here ``get_weather``, then ``add_reminder``),
then answers in text. The model fills in every argument (decoded under a grammar built
from the tools' schemas) and writes the answer.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from langchain.agents import create_agent
from langchain_core.messages import AIMessage
from langchain_core.tools import tool
from pydantic import BaseModel, Field

from curp_chain import CurpChatModel
from curp_chain_integrations.langchain.agents import CurpUserMiddleware

USERS = {
    "alice": [
        "Sunrise trail run done: 18 km, legs on fire.",
        "New carbon race shoes arrived!",
        "Marathon training, week 12: long run 32 km.",
    ],
    "bob": [
        "Finished a 1,200-piece castle puzzle tonight.",
        "Rainy Sunday with tea and a fantasy novel.",
        "Board game night: won Catan twice.",
    ],
}
REQUEST = "What is the weather in Lyon on Saturday? Then add a reminder for my Saturday plan."


class WeatherArgs(BaseModel):
    city: str = Field(max_length=40)
    day: str = Field(max_length=12)


class ReminderArgs(BaseModel):
    day: str = Field(max_length=12)
    text: str = Field(max_length=80, description="a short reminder")


# max_length reaches the grammar: a small model that rambles cannot overrun max_tokens.
@tool(args_schema=WeatherArgs)
def get_weather(city: str, day: str) -> str:
    """The weather forecast for a city on a day of the week."""
    return f"{day} in {city}: sunny, 21 C, light wind."


@tool(args_schema=ReminderArgs)
def add_reminder(day: str, text: str) -> str:
    """Add a reminder to the user's calendar for a day of the week."""
    return f"Reminder saved for {day}: {text}"


@dataclass
class UserContext:
    user_id: str


def run(store_url: str) -> dict[str, list[str]]:
    model = CurpChatModel(store_url=store_url, max_tokens=128)
    for user_id, items in USERS.items():
        model.add_history(user_id, items)
    agent = create_agent(
        model,
        tools=[get_weather, add_reminder],
        context_schema=UserContext,
        middleware=[CurpUserMiddleware()],
    )
    transcript: dict[str, list[str]] = {}
    for user_id in USERS:
        result = agent.invoke(
            {"messages": [("user", REQUEST)]}, context=UserContext(user_id=user_id)
        )
        lines = transcript.setdefault(user_id, [])
        for message in result["messages"]:
            if isinstance(message, AIMessage):
                lines += [f"call {c['name']}({c['args']})" for c in message.tool_calls]
        lines.append(f"answer: {result['messages'][-1].content}")
    return transcript


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        transcript = run(f"sqlite:///{Path(folder) / 'history.db'}")
    for user_id, lines in transcript.items():
        print(f"== {user_id}")
        for line in lines:
            print("  " + line)


if __name__ == "__main__":
    main()
