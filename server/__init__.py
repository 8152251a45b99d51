"""The agentctl HTTP service (Litestar)."""
