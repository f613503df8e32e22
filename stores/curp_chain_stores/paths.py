"""Where the default SQLite history database lives."""

from __future__ import annotations

from sqlalchemy import URL

from curp_chain.locations import curp_home

DB_FILENAME = "history.sqlite"


def default_sqlite_url() -> str:
    """``sqlite:///`` URL of ``history.sqlite`` in ``$CURP_HOME`` or the user data directory."""
    return URL.create("sqlite", database=str(curp_home() / DB_FILENAME)).render_as_string()
