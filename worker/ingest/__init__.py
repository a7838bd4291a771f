"""Ingest: index chunks (prepare, embed, store), archives and other sources a growing job expands, re-embedding."""
