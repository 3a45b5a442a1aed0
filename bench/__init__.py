"""Benchmarks and the evaluation corpus. Scripts print figures; nothing here asserts speed."""
