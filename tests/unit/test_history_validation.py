"""The batch validator and the user id policy of `curp_chain.interfaces.history`, before any
model runs."""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from curp_chain.errors import InvalidHistoryItemError, InvalidUserIdError
from curp_chain.interfaces.history import (
    MAX_METADATA_BYTES,
    MAX_METADATA_DEPTH,
    NewHistoryItem,
    content_hash,
    normalize_items,
    validate_user_id,
)


def _nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


@pytest.mark.parametrize(
    ("bad", "rule", "message"),
    # Each `type: ignore` here marks a wrong type passed on purpose: callers without a type
    # checker can pass one, and the validator must reject it.
    [
        ("lone \ud800 surrogate", "text", "unpaired surrogate"),
        ("nul\x00", "text", "NUL"),
        (NewHistoryItem("ok", kind=5), "kind", "type int"),  # type: ignore[arg-type]
        (NewHistoryItem("ok", kind="a\x00b"), "kind", "NUL"),
        (NewHistoryItem("ok", kind="\udc80"), "kind", "surrogate"),
        (NewHistoryItem("ok", kind="k" * 65), "kind", "at most 64"),
        (NewHistoryItem("ok", created_at=datetime(1, 1, 1, tzinfo=UTC)), "created_at", "1900"),
        (
            NewHistoryItem(
                "ok", created_at=datetime(9999, 12, 31, tzinfo=timezone(-timedelta(hours=5)))
            ),
            "created_at",
            "2200",
        ),
        (NewHistoryItem("ok", created_at=datetime(1899, 12, 31)), "created_at", "outside"),
        (NewHistoryItem("ok", metadata=_nested(5000)), "metadata", "deeper than 32"),
        (NewHistoryItem("ok", metadata={1: "x"}), "metadata", "keys must be strings"),  # type: ignore[dict-item]
        (NewHistoryItem("ok", metadata={"x": {2: "y"}}), "metadata", "keys must be strings"),
        (NewHistoryItem("ok", metadata=[]), "metadata", "type list"),  # type: ignore[arg-type]
        (NewHistoryItem("ok", metadata={"b": b"raw"}), "metadata", "bytes"),
        (NewHistoryItem("ok", metadata={"s": {1, 2}}), "metadata", "set"),
        (NewHistoryItem("ok", metadata={"x": float("inf")}), "metadata", "inf"),
        (NewHistoryItem("ok", metadata={"x": "\ud800"}), "metadata", "surrogate"),
        (NewHistoryItem("ok", metadata={"x": "\x00"}), "metadata", "NUL"),
        (NewHistoryItem("ok", metadata={"x": "y" * MAX_METADATA_BYTES}), "metadata", "65,536"),
        (NewHistoryItem("ok", metadata={"n": 10**5000}), "metadata", "JSON-serialisable"),
        (NewHistoryItem(7), "text", "type int"),  # type: ignore[arg-type]
    ],
)
def test_bad_item_names_its_index_and_rule(bad: Any, rule: str, message: str) -> None:
    with pytest.raises(InvalidHistoryItemError, match=message) as caught:
        normalize_items(["fine", "also fine", bad])
    assert caught.value.index == 2
    assert caught.value.rule == rule
    assert str(caught.value).startswith("item 2 ")


def test_limits_themselves_are_accepted() -> None:
    metadata = {"deep": _nested(MAX_METADATA_DEPTH - 1)}
    (item,) = normalize_items([NewHistoryItem("ok", kind="k" * 64, metadata=metadata)])
    assert item.metadata == metadata
    low = NewHistoryItem("a", created_at=datetime(1900, 1, 1, tzinfo=UTC))
    high = NewHistoryItem("b", created_at=datetime(2200, 12, 31, 23, 59, tzinfo=UTC))
    assert [i.created_at for i in normalize_items([low, high])] == [low.created_at, high.created_at]


def test_created_at_is_converted_to_utc_and_naive_is_read_as_utc() -> None:
    plus2 = timezone(timedelta(hours=2))
    aware, naive = normalize_items(
        [
            NewHistoryItem("a", created_at=datetime(2024, 5, 1, 12, tzinfo=plus2)),
            NewHistoryItem("b", created_at=datetime(2024, 5, 1, 12)),
        ]
    )
    assert aware.created_at == datetime(2024, 5, 1, 10, tzinfo=UTC)
    assert aware.created_at is not None and aware.created_at.tzinfo == UTC
    assert naive.created_at == datetime(2024, 5, 1, 12, tzinfo=UTC)


@pytest.mark.parametrize(
    "batch",
    [{"a": 1}, {"a", "b"}, frozenset({"a"}), "text", b"bytes", bytearray(b"x"), 5, None],
)
def test_a_batch_must_be_a_sequence_of_items(batch: Any) -> None:
    with pytest.raises(InvalidHistoryItemError) as caught:
        normalize_items(batch)
    assert caught.value.rule == "batch" and caught.value.index is None


def test_tuples_and_iterators_are_batches() -> None:
    def generate() -> Iterator[str]:
        yield from ("a", "b")

    assert [i.text for i in normalize_items(("a", "b"))] == ["a", "b"]
    assert [i.text for i in normalize_items(generate())] == ["a", "b"]


# --- User ids -----------------------------------------------------------------------------


def test_user_ids_are_nfc_normalised_and_keep_case() -> None:
    composed, decomposed = "jos\u00e9", "jose\u0301"
    assert validate_user_id(decomposed) == composed == validate_user_id(composed)
    assert validate_user_id("Bob") == "Bob" != validate_user_id("bob")
    assert validate_user_id("ｂｏｂ") == "ｂｏｂ"  # compatibility forms are not folded


@pytest.mark.parametrize(
    "user_id", [" bob", "bob ", "bob\n", "b\tob", "b\x00b", "b\x7fb", "\ud800"]
)
def test_user_ids_with_whitespace_around_or_control_characters_are_refused(user_id: str) -> None:
    with pytest.raises(InvalidUserIdError):
        validate_user_id(user_id)


def test_inner_spaces_and_symbols_are_kept() -> None:
    for user_id in ["ada lovelace", "'; DROP TABLE x; --", "50%_off", "a/b\\c", "🎉"]:
        assert validate_user_id(user_id) == user_id


# --- Properties ---------------------------------------------------------------------------

json_leaf = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
json_value = st.recursive(
    json_leaf,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=10,
)
any_value = st.recursive(
    json_leaf | st.binary() | st.datetimes() | st.just(float("nan")),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(max_size=3) | st.integers(), inner, max_size=3)
    ),
    max_leaves=10,
)


def _storable(text: str) -> bool:
    return "\x00" not in text and not any(unicodedata.category(c) == "Cs" for c in text)


@settings(max_examples=200, deadline=None)
@given(
    text=st.text(min_size=1, max_size=50),
    kind=st.text(max_size=70),
    metadata=st.dictionaries(st.text(max_size=5), any_value, max_size=3),
    year=st.integers(1, 9999),
)
def test_validator_either_accepts_storable_items_or_raises_the_project_error(
    text: str, kind: str, metadata: dict[str, Any], year: int
) -> None:
    item = NewHistoryItem(
        text, kind=kind, created_at=datetime(year, 6, 1, tzinfo=UTC), metadata=metadata
    )
    try:
        (checked,) = normalize_items([item])
    except InvalidHistoryItemError as error:
        assert error.index == 0 and error.rule in ("text", "kind", "created_at", "metadata")
        return
    assert checked.text == text and _storable(text) and text.strip()
    assert 0 < len(checked.kind) <= 64 and _storable(checked.kind)
    assert checked.created_at is not None and 1900 <= checked.created_at.year <= 2200
    encoded = json.dumps(checked.metadata, allow_nan=False, ensure_ascii=False)
    assert json.loads(encoded) == json.loads(json.dumps(metadata, allow_nan=False))
    assert len(content_hash(checked)) == 64


@settings(max_examples=100, deadline=None)
@given(metadata=st.dictionaries(st.text(max_size=5), json_value, max_size=4))
def test_plain_json_metadata_is_always_accepted_unchanged(metadata: dict[str, Any]) -> None:
    if any(not _storable(s) for s in _strings(metadata)):
        return
    (checked,) = normalize_items([NewHistoryItem("x", metadata=metadata)])
    assert checked.metadata == metadata


@settings(max_examples=100, deadline=None)
@given(user_id=st.text(min_size=1, max_size=40))
def test_user_id_policy_is_idempotent(user_id: str) -> None:
    try:
        checked = validate_user_id(user_id)
    except InvalidUserIdError:
        return
    assert validate_user_id(checked) == checked
    assert checked == unicodedata.normalize("NFC", user_id) and checked == checked.strip()


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, child in value.items():
            yield key
            yield from _strings(child)
    elif isinstance(value, list):
        for child in value:
            yield from _strings(child)


def test_content_hash_depends_on_every_field() -> None:
    base = NewHistoryItem(
        "x", kind="k", created_at=datetime(2024, 1, 1, tzinfo=UTC), metadata={"a": 1}
    )
    variants = [
        NewHistoryItem("y", "k", base.created_at, {"a": 1}),
        NewHistoryItem("x", "j", base.created_at, {"a": 1}),
        NewHistoryItem("x", "k", None, {"a": 1}),
        NewHistoryItem("x", "k", base.created_at, {"a": 2}),
    ]
    assert len({content_hash(base), *map(content_hash, variants)}) == 5
    same_instant = NewHistoryItem(
        "x", "k", datetime(2024, 1, 1, 2, tzinfo=timezone(timedelta(hours=2))), {"a": 1}
    )
    assert content_hash(same_instant) == content_hash(base)


@pytest.mark.parametrize(
    ("bad", "rule"),
    [
        ("lone \ud800 surrogate", "text"),  # used to reach the tokenizer: a raw TypeError
        (NewHistoryItem("ok", kind="a\x00b"), "kind"),  # PostgreSQL refused it after encoding
        (NewHistoryItem("ok", created_at=datetime(9999, 1, 1, tzinfo=UTC)), "created_at"),
    ],
)
def test_add_history_refuses_a_bad_batch_before_encoding(
    encoder: Any, memory_store: Any, bad: Any, rule: str
) -> None:
    from curp_chain.model.checkpoint import load_checkpoint
    from curp_chain.personalization.personalizer import Personalizer

    personalizer = Personalizer(load_checkpoint(), encoder, memory_store)
    with pytest.raises(InvalidHistoryItemError) as caught:
        personalizer.add_history("ana", ["fine", bad])
    assert (caught.value.index, caught.value.rule) == (1, rule)
    assert memory_store.list_users() == []
