"""The edge's links to other parties: the cloud's gRPC API and the MQTT control plane."""
