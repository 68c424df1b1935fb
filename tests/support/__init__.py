"""Test doubles that are real where it matters: an HTTP server that speaks the OpenAI protocol and
tiny models built offline from configs (used by the test suite and the benchmarks)."""
