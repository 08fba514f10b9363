"""Bytes at rest, and the one owner of the cache directory: blob files, metadata, the LRU index and eviction."""
