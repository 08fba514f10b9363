"""The one owner of the cache directory: blob files, metadata, the LRU index and eviction, single-flight downloads."""
