"""Registry submission: outcomes, a pseudonymised package per period, delivery by folder or
SFTP, and the ledger that makes the next package a delta."""
