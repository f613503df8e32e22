"""Memory that learns: a finished turn lands in the user's history, encoded, and the next
request uses it. Checked through the store itself."""

from __future__ import annotations

from langchain_core.messages import AIMessage, HumanMessage, ToolMessage

from curp_chain import CurpChatModel

TURN = "I only write in lowercase and love cats"


def test_memory_is_off_by_default(llama_backend, memory_store) -> None:
    model = CurpChatModel(backend=llama_backend, history_store=memory_store, max_tokens=8)
    model.add_history("kim", ["Sunrise trail run: 18 km."])
    model.invoke(TURN, user_id="kim")
    assert [item.text for item in memory_store.get_items("kim")] == ["Sunrise trail run: 18 km."]


def test_a_turn_is_stored_encoded_and_used_next(llama_backend, memory_store) -> None:
    model = CurpChatModel(
        backend=llama_backend, history_store=memory_store, max_tokens=8, remember_turns=True
    )
    model.add_history("kim", ["Sunrise trail run: 18 km."])
    first = model.invoke(TURN, user_id="kim")
    assert first.response_metadata["curp"]["history_items"] == 1  # stored after the reply
    newest = memory_store.get_items("kim")[0]
    assert newest.text == TURN and newest.kind == "chat"
    personalizer = model.get_personalizer()
    cached = memory_store.get_codes("kim", personalizer.codebook_version)
    assert not cached.stale  # encoded and quantized at write time
    codes = {entry.item_id: entry.codes for entry in cached.encoded}
    assert codes[newest.id] == tuple(personalizer.encode_codes([TURN])[0].tolist())
    second = model.invoke("What should I post today?", user_id="kim")
    assert second.response_metadata["curp"]["history_items"] == 2


def test_replies_are_stored_only_when_asked_and_tool_rounds_once(
    llama_backend, memory_store
) -> None:
    model = CurpChatModel(
        backend=llama_backend,
        history_store=memory_store,
        max_tokens=8,
        remember_turns=True,
        remember_replies=True,
    )
    reply = model.invoke(TURN, user_id="lee")
    items = memory_store.get_items("lee")
    assert [i.kind for i in items] == ["chat_reply", "chat"]
    assert items[0].text == reply.content
    # A model call after a tool result answers no new user message: nothing is stored.
    after_tool = [
        HumanMessage("What is 2 plus 2?"),
        AIMessage("", tool_calls=[{"name": "add", "args": {"a": 2, "b": 2}, "id": "c1"}]),
        ToolMessage("4", tool_call_id="c1"),
    ]
    model.invoke(after_tool, user_id="lee")
    assert len(memory_store.get_items("lee")) == 2


def test_the_message_history_shim_reads_and_writes_the_store(memory_store) -> None:
    from langchain_core.messages import SystemMessage

    from curp_chain_integrations.langchain.message_history import CurpChatMessageHistory

    model = CurpChatModel(history_store=memory_store)
    model.add_history("ana", ["Sunrise trail run: 18 km."])
    history = CurpChatMessageHistory(model, "ana")
    history.add_messages([SystemMessage("be brief"), HumanMessage(TURN), AIMessage("noted!")])
    assert [(type(m).__name__, m.content) for m in history.messages] == [
        ("HumanMessage", "Sunrise trail run: 18 km."),
        ("HumanMessage", TURN),
        ("AIMessage", "noted!"),
    ]
    personalizer = model.get_personalizer()
    cached = memory_store.get_codes("ana", personalizer.codebook_version)
    assert len(cached.encoded) == 3 and not cached.stale
    history.clear()
    assert history.messages == [] and memory_store.get_items("ana") == []
