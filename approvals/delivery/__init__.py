"""Side effects after a state change: the outbox, and where a request was shown to people."""
