"""CurpStore, LangGraph's BaseStore over the history store, on SQLite and PostgreSQL.

LangGraph publishes no reusable store conformance tests (langgraph-checkpoint-conformance
covers checkpointers only), so these cover the behaviours LangGraph's own stores promise:
put, get, update, delete, search with prefix, filter, query, limit and offset, namespace
listing with prefix, suffix, wildcards, depth, limit and offset, batches, and the async API.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from langgraph.store.base import GetOp, Item, ListNamespacesOp, PutOp, SearchOp
from store_support import Database

from curp_chain import CurpChatModel
from curp_chain.errors import InvalidStoreOperationError, InvalidUserIdError
from curp_chain.interfaces.history import NewHistoryItem
from curp_chain_integrations.langchain.langgraph_store import CurpStore, CurpStoreConfig

CATS: dict[str, Any] = {
    "text": "I have two cats and I only write in lowercase",
    "topic": "pets",
    "n": 2,
}


@pytest.fixture
def model(database: Database) -> CurpChatModel:
    history = database.open()
    history.setup()
    return CurpChatModel(history_store=history)


@pytest.fixture
def store(model: CurpChatModel) -> CurpStore:
    return CurpStore(model)


def _codes(model: CurpChatModel, user_id: str) -> dict[int, tuple[int, ...]]:
    personalizer = model.get_personalizer()
    cached = personalizer.store.get_codes(user_id, personalizer.codebook_version)
    assert not cached.stale  # encoded and quantized at write time
    return {entry.item_id: entry.codes for entry in cached.encoded}


def test_a_put_is_a_history_item_encoded_at_write_time(
    model: CurpChatModel, store: CurpStore
) -> None:
    model.add_history("ana", ["Sunrise trail run: 18 km."])
    store.put(("ana", "memories"), "pets", CATS)
    newest = model.history("ana")[0]
    assert (newest.text, newest.kind) == (CATS["text"], "memory")
    expected = model.get_personalizer().encode_codes([CATS["text"]])[0].tolist()
    assert _codes(model, "ana")[newest.id] == tuple(expected)
    item = store.get(("ana", "memories"), "pets")
    assert item is not None and item.value == CATS and item.namespace == ("ana", "memories")
    assert item.created_at == item.updated_at == newest.created_at


def test_update_replaces_the_one_item_and_delete_removes_it(
    model: CurpChatModel, store: CurpStore
) -> None:
    model.add_history("ana", ["Sunrise trail run: 18 km."])
    store.put(("ana", "memories"), "pets", CATS)
    first = store.get(("ana", "memories"), "pets")
    time.sleep(0.01)
    store.put(("ana", "memories"), "pets", {"text": "three cats now"})
    second = store.get(("ana", "memories"), "pets")
    assert first is not None and second is not None
    assert second.value == {"text": "three cats now"}
    assert second.created_at == first.created_at and second.updated_at > first.updated_at
    texts = [item.text for item in model.history("ana")]
    assert texts == ["three cats now", "Sunrise trail run: 18 km."]
    assert len(_codes(model, "ana")) == 2  # the old item's codes went with it
    store.delete(("ana", "memories"), "pets")
    assert store.get(("ana", "memories"), "pets") is None
    assert [item.text for item in model.history("ana")] == ["Sunrise trail run: 18 km."]
    store.delete(("ana", "memories"), "pets")  # deleting what is gone is no error


def test_duplicates_from_racing_puts_read_as_the_newest_and_go_together(
    model: CurpChatModel, store: CurpStore
) -> None:
    store.put(("ana", "m"), "k", {"text": "first"})
    (first,) = model.history("ana")
    time.sleep(0.01)
    # What a put racing the first one leaves: a second item for the same key.
    metadata = {**first.metadata}
    metadata["langgraph_store"] = {**metadata["langgraph_store"], "value": {"text": "second"}}
    model.add_history("ana", [NewHistoryItem("second", kind="memory", metadata=metadata)])
    item = store.get(("ana", "m"), "k")
    assert item is not None and item.value == {"text": "second"}
    assert len(store.search(("ana",))) == 1
    store.delete(("ana", "m"), "k")
    assert model.history("ana") == []


def test_the_text_encoded_comes_from_text_fields_index_or_json(
    model: CurpChatModel, store: CurpStore
) -> None:
    store.put(("ana", "m"), "a", {"content": "from content", "text": ""})
    store.put(("ana", "m"), "b", {"note": "from note", "x": 1}, index=["note"])
    store.put(("ana", "m"), "c", {"score": 3, "tags": ["x"]})
    assert [item.text for item in model.history("ana")] == [
        '{"score":3,"tags":["x"]}',
        "from note",
        "from content",
    ]


def test_reads_see_only_store_items_and_users_never_mix(
    model: CurpChatModel, store: CurpStore
) -> None:
    model.add_history("ana", [NewHistoryItem("a plain memory", kind="memory")])
    store.put(("ana", "memories"), "k", {"text": "ana's"})
    store.put(("bob", "memories"), "k", {"text": "bob's"})
    assert [i.value for i in store.search(("ana",))] == [{"text": "ana's"}]
    bobs = store.get(("bob", "memories"), "k")
    assert bobs is not None and bobs.value == {"text": "bob's"}
    assert [(i.namespace, i.key) for i in store.search(())] == [
        (("bob", "memories"), "k"),
        (("ana", "memories"), "k"),
    ]
    model.forget_user("bob")
    assert store.get(("bob", "memories"), "k") is None


def test_search_by_prefix_filter_limit_and_offset(store: CurpStore) -> None:
    for n in range(5):
        store.put(("ana", "notes", "2024" if n < 3 else "2025"), f"k{n}", {"text": f"n{n}", "n": n})
    store.put(("ana", "todo"), "t", {"text": "buy milk", "n": 9, "meta": {"tag": "home"}})
    assert [i.key for i in store.search(("ana", "notes"))] == ["k4", "k3", "k2", "k1", "k0"]
    assert [i.key for i in store.search(("ana", "notes", "2024"))] == ["k2", "k1", "k0"]
    assert [i.key for i in store.search(("ana",), limit=2, offset=1)] == ["k4", "k3"]
    assert [i.key for i in store.search(("ana",), filter={"n": 1})] == ["k1"]
    assert [i.key for i in store.search(("ana",), filter={"n": {"$gte": 3, "$lt": 9}})] == [
        "k4",
        "k3",
    ]
    assert [i.key for i in store.search(("ana",), filter={"n": {"$ne": 9}}, limit=1)] == ["k4"]
    assert [i.key for i in store.search(("ana",), filter={"meta": {"tag": "home"}})] == ["t"]
    assert store.search(("ana",), filter={"missing": 1}) == []
    with pytest.raises(InvalidStoreOperationError, match="operator"):
        store.search(("ana",), filter={"n": {"$near": 1}})


def test_search_with_a_query_ranks_by_meaning(store: CurpStore) -> None:
    store.put(("ana", "m"), "cats", {"text": "My two cats sleep on the sofa all day"})
    store.put(("ana", "m"), "tax", {"text": "The quarterly tax return is due in April"})
    store.put(("ana", "m"), "run", {"text": "Ran a half marathon in the rain"})
    found = store.search(("ana",), query="kittens and pets")
    assert found[0].key == "cats"
    assert all(i.score is not None for i in found)
    scores = [i.score for i in found if i.score is not None]  # all of them, as checked above
    assert scores == sorted(scores, reverse=True)
    assert [i.key for i in store.search(("ana",), query="money owed", limit=1)] == ["tax"]


def test_list_namespaces_with_prefix_suffix_depth_limit_offset(store: CurpStore) -> None:
    for namespace in [("ana", "a", "x"), ("ana", "b", "x"), ("ana", "b", "y"), ("bob", "a")]:
        store.put(namespace, "k", {"text": "t"})
    assert store.list_namespaces() == [
        ("ana", "a", "x"),
        ("ana", "b", "x"),
        ("ana", "b", "y"),
        ("bob", "a"),
    ]
    assert store.list_namespaces(prefix=("ana", "b")) == [("ana", "b", "x"), ("ana", "b", "y")]
    assert store.list_namespaces(suffix=("x",)) == [("ana", "a", "x"), ("ana", "b", "x")]
    assert store.list_namespaces(prefix=("*", "a")) == [("ana", "a", "x"), ("bob", "a")]
    assert store.list_namespaces(max_depth=2) == [("ana", "a"), ("ana", "b"), ("bob", "a")]
    assert store.list_namespaces(limit=2, offset=1) == [("ana", "b", "x"), ("ana", "b", "y")]
    assert store.list_namespaces(prefix=("carl",)) == []


def test_a_batch_reads_before_it_writes_and_the_last_put_wins(store: CurpStore) -> None:
    store.put(("ana", "m"), "k", {"text": "old"})
    results = store.batch(
        [
            PutOp(("ana", "m"), "k", {"text": "new"}),
            GetOp(("ana", "m"), "k"),
            PutOp(("ana", "m"), "k", {"text": "newest"}),
            PutOp(("ana", "m"), "gone", None),
            SearchOp(("ana",)),
            ListNamespacesOp(),
        ]
    )
    got, searched = results[1], results[4]
    assert isinstance(got, Item) and got.value == {"text": "old"}
    assert isinstance(searched, list) and len(searched) == 1 and isinstance(searched[0], Item)
    assert searched[0].value == {"text": "old"}
    assert results[5] == [("ana", "m")]
    item = store.get(("ana", "m"), "k")
    assert item is not None and item.value == {"text": "newest"}
    assert len(store.search(("ana",))) == 1


async def test_async_api(model: CurpChatModel, store: CurpStore) -> None:
    await store.aput(("ana", "m"), "k", {"text": "async cats"})
    item = await store.aget(("ana", "m"), "k")
    assert item is not None and item.value == {"text": "async cats"}
    assert [i.key for i in await store.asearch(("ana",), filter={"text": "async cats"})] == ["k"]
    assert await store.alist_namespaces(prefix=("ana",)) == [("ana", "m")]
    await store.adelete(("ana", "m"), "k")
    assert await store.aget(("ana", "m"), "k") is None
    assert model.history("ana") == []


def test_the_user_can_sit_at_another_position(model: CurpChatModel) -> None:
    store = CurpStore(model, CurpStoreConfig(user_position=1))
    store.put(("memories", "ana"), "k", {"text": "hello"})
    assert [item.text for item in model.history("ana")] == ["hello"]
    assert store.list_namespaces(prefix=("memories",)) == [("memories", "ana")]
    with pytest.raises(InvalidStoreOperationError, match="position 1"):
        store.put(("memories",), "k", {"text": "whose?"})


@pytest.mark.parametrize(
    ("namespace", "value", "error"),
    [
        (("ana",), {"when": object()}, InvalidStoreOperationError),
        (("ana",), {"x": float("nan")}, InvalidStoreOperationError),
        ((" ana ",), {"text": "t"}, InvalidUserIdError),
    ],
)
def test_bad_puts_are_project_errors_and_store_nothing(
    model: CurpChatModel, store: CurpStore, namespace: Any, value: Any, error: type[Exception]
) -> None:
    with pytest.raises(error):
        store.put(namespace, "k", value)
    assert model.get_store().list_users() == []
    with pytest.raises(InvalidStoreOperationError, match="ttl"):
        store.batch([PutOp(("ana",), "k", {"text": "t"}, ttl=5.0)])


def test_a_graph_node_writes_a_memory_that_shapes_the_users_soft_tokens(
    model: CurpChatModel, store: CurpStore
) -> None:
    from typing import TypedDict

    from langgraph.graph import END, START, StateGraph
    from langgraph.runtime import Runtime

    class State(TypedDict):
        user_id: str
        fact: str

    def remember(state: State, runtime: Runtime[None]) -> dict[str, Any]:
        assert runtime.store is not None
        runtime.store.put((state["user_id"], "memories"), "diet", {"text": state["fact"]})
        return {}

    builder = StateGraph(State)
    builder.add_node("remember", remember)
    builder.add_edge(START, "remember")
    builder.add_edge("remember", END)
    graph = builder.compile(store=store)
    fact = "I am vegetarian and love spicy food"
    graph.invoke({"user_id": "kim", "fact": fact})
    (item,) = model.history("kim")
    assert (item.text, item.kind) == (fact, "memory")
    assert item.id in _codes(model, "kim")
    personalization = model.get_personalizer().personalize("kim", "What should I cook?")
    assert personalization.personalized and personalization.history_items == 1
