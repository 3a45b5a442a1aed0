"""The edge's pure core: numpy only, no I/O, no clock (decoding, confidence, escalation, desired state)."""
