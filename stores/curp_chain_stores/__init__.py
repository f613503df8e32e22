"""SQL history stores for curp-chain: SQLite out of the box, PostgreSQL with the extra."""

from curp_chain_stores.paths import default_sqlite_url
from curp_chain_stores.store import SQLHistoryStore

__all__ = ["SQLHistoryStore", "default_sqlite_url"]
