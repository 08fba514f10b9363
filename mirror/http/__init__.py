"""The ASGI app, its routes, the fast path, access control, the access log and the dashboard."""
