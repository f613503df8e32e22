"""The default system messages: the model's when a request has none and no soft tokens, the
checkpoint's when it has soft tokens; never over the caller's own."""

from __future__ import annotations

from langchain_core.messages import BaseMessage, HumanMessage, SystemMessage

from curp_chain import CurpChatModel
from curp_chain.chat.system_message import DEFAULT_SYSTEM_MESSAGE, with_default_system
from curp_chain.model.checkpoint import LAMP7_CHECKPOINT
from curp_chain.runtime.prompt import ChatTurn


def test_the_default_leads_only_requests_without_a_system_message() -> None:
    turns = [ChatTurn("user", "Plans for the weekend?")]
    assert with_default_system(turns, "Be brief.") == [ChatTurn("system", "Be brief."), *turns]
    own = [ChatTurn("system", "Answer in French."), *turns]
    assert with_default_system(own, "Be brief.") == own
    assert with_default_system(turns, None) == turns
    # With soft tokens, the personalized one (the checkpoint's), or none.
    assert with_default_system(turns, "Be brief.", [[0.1, 0.2]]) == turns
    assert with_default_system(turns, "Be brief.", [[0.1]], "Comment.") == [
        ChatTurn("system", "Comment."),
        *turns,
    ]
    assert with_default_system(own, "Be brief.", [[0.1]], "Comment.") == own
    assert with_default_system(turns, "Be brief.", []) == [ChatTurn("system", "Be brief."), *turns]


def test_curp_chat_model_sends_its_default_unless_told_otherwise(
    llama_backend, memory_store
) -> None:
    model = CurpChatModel(backend=llama_backend, history_store=memory_store)
    request: list[BaseMessage] = [HumanMessage("Plans for the weekend?")]
    prompt = model._prepare(request, None, {}).prompt
    assert f"<|im_start|>system\n{DEFAULT_SYSTEM_MESSAGE}<|im_end|>" in prompt.before
    assert "named SmolLM" not in prompt.before

    own = model._prepare([SystemMessage("Answer in French."), *request], None, {}).prompt
    assert "Answer in French." in own.before and DEFAULT_SYSTEM_MESSAGE not in own.before

    # None sends no system message: SmolLM2's chat template then adds its own.
    plain = CurpChatModel(
        backend=llama_backend, history_store=memory_store, default_system_message=None
    )
    assert "named SmolLM" in plain._prepare(request, None, {}).prompt.before

    # A personalized request gets the system message its soft tokens were trained under: an
    # everyday one, the assist checkpoint's.
    model.add_history("maya", ["omg just ran 18k lol", "rest day = pizza lol"])
    personal = model._prepare(request, None, {"user_id": "maya"}).prompt
    chat_system = model.get_personalizer("assist").user_model.config.chat_system_message
    assert personal.soft is not None and chat_system is not None
    assert f"<|im_start|>system\n{chat_system}<|im_end|>" in personal.before
    assert DEFAULT_SYSTEM_MESSAGE not in personal.before

    # A structured reply's format instruction joins it rather than replacing it.
    schema = {"type": "object", "properties": {"plan": {"type": "string"}}}
    shaped = model._prepare(request, None, {"user_id": "maya", "json_schema": schema}).prompt
    assert f"system\n{chat_system}\n\nReply with JSON only" in shaped.before

    # Turned off, or a checkpoint that names none (the LaMP-7 one): no system message.
    model.checkpoint_system_message = False
    assert chat_system not in model._prepare(request, None, {"user_id": "maya"}).prompt.before
    lamp7 = CurpChatModel(
        backend=llama_backend, history_store=memory_store, checkpoint=str(LAMP7_CHECKPOINT)
    )
    assert "named SmolLM" in lamp7._prepare(request, None, {"user_id": "maya"}).prompt.before
