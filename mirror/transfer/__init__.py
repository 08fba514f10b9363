"""Bytes in motion: single-flight downloads, their pieces and ranges, partial files, pass-through streams."""
