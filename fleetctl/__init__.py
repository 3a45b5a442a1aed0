"""`fleetctl`: the operator's tool (keys, model fetch/build/verify; fleet config and rollouts)."""
