"""Run state on disk: the append-only journal and the fingerprint of a setup."""
