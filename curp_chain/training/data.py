"""The training corpora by name: PAN 2019 users and the LaMP-7 profiles."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from curp_chain.data.users import UserTexts, load_pan
from curp_chain.errors import CurpError
from curp_chain.tasks.lamp7 import load_lamp7_profiles


def load_users(
    data_dir: str | Path | None = None,
    corpora: Sequence[str] = ("pan19",),
    *,
    min_items: int = 8,
    max_users: int | None = None,
) -> list[UserTexts]:
    """Users of the named corpora ("pan19", "lamp7"), PAN first."""
    unknown = set(corpora) - {"pan19", "lamp7"}
    if unknown:
        raise CurpError(f"unknown corpus {sorted(unknown)}; choose from pan19, lamp7")
    users: list[UserTexts] = []
    if "pan19" in corpora:
        users += load_pan(data_dir, min_items=min_items, max_users=max_users)
    if "lamp7" in corpora:
        users += [u for u in load_lamp7_profiles(data_dir) if len(u.texts) >= min_items]
    return users
