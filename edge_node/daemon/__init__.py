"""`edge-node run`: the long-running daemon (sources, outbox, sender, retries, events)."""
