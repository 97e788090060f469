"""Benchmarks on BEIR-format data through the same engine the MCP tools use."""
