"""Per-request personalization from stored codes: each user's own, and always current."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from curp_chain.model.checkpoint import load_checkpoint
from curp_chain.personalization.personalizer import Personalizer
from curp_chain_stores import SQLHistoryStore

QUERY = "Paraphrase the following tweet: off to the beach this weekend"


def _reference(personalizer: Personalizer, user_id: str) -> np.ndarray:
    """The user's soft tokens through CurpUserModel itself, from the store's codes."""
    codes = [item.codes for item in personalizer.user_codes(user_id)]
    tensor = torch.tensor(codes)[None]
    query = personalizer.item_vectors([QUERY])
    mask = torch.ones(tensor.shape[:2], dtype=torch.bool)
    with torch.no_grad():
        return personalizer.user_model(tensor, mask, query)[0].numpy()


def test_each_user_gets_soft_tokens_of_their_own_current_history(
    encoder: Any, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'history.sqlite'}"
    store = SQLHistoryStore(url)
    store.setup()
    personalizer = Personalizer(load_checkpoint(), encoder, store)
    personalizer.add_history("ana", ["lol cant wait for the weekend!!!", "beach day :)"])
    personalizer.add_history("bob", ["Quarterly results are in. Revenue grew 4%."])
    ana, bob = (personalizer.personalize(user, QUERY) for user in ("ana", "bob"))
    assert ana.soft is not None and bob.soft is not None
    np.testing.assert_allclose(ana.soft, _reference(personalizer, "ana"), atol=1e-5)
    np.testing.assert_allclose(bob.soft, _reference(personalizer, "bob"), atol=1e-5)
    assert not np.allclose(ana.soft, bob.soft, atol=1e-3)

    # A write through another store object (another process would look the same to
    # SQLite) is seen by this personalizer's next request.
    other = SQLHistoryStore(url)
    Personalizer(load_checkpoint(), encoder, other).add_history(
        "ana", ["Quarterly results are in. Revenue grew 4%."]
    )
    again = personalizer.personalize("ana", QUERY)
    assert again.history_items == 3 and again.soft is not None
    assert not np.allclose(again.soft, ana.soft, atol=1e-4)
    np.testing.assert_allclose(again.soft, _reference(personalizer, "ana"), atol=1e-5)
    bob_again = personalizer.personalize("bob", QUERY).soft
    assert bob_again is not None
    np.testing.assert_allclose(bob_again, bob.soft, atol=1e-6)
    other.close()
    store.close()
