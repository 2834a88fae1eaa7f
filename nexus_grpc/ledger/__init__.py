"""Budget ledger: the Ledger protocol and its memory, sqlite and redis implementations."""
