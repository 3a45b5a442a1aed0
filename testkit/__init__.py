"""The process harness for tests, benches and the demo: real Redis, Mosquitto and cloud processes."""
