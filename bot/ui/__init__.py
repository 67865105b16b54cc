"""Callback data, keyboards and message rendering (every outside string escaped)."""
