"""The internals of uvicorn that mirror/http/server.py relies on: a new release that moves one fails here, by name.

pyproject.toml bounds uvicorn to the releases this suite has passed on; raising the bound
starts here.
"""

from __future__ import annotations

import inspect

import pytest
from uvicorn.protocols.http import flow_control, httptools_impl
from uvicorn.server import ServerState

# Methods of HttpToolsProtocol that BoundedHttpToolsProtocol overrides or calls.
METHODS = [
    "connection_made",
    "connection_lost",
    "data_received",
    "on_message_begin",
    "on_headers_complete",
    "on_body",
    "on_message_complete",
    "timeout_keep_alive_handler",
    "_unset_keepalive_if_required",
]
# Attributes it reads from an instance (set in uvicorn's __init__ or connection_made).
ATTRIBUTES = ["cycle", "pipeline", "flow", "server_state", "parser", "loop", "transport"]


@pytest.mark.parametrize("name", METHODS)
def test_protocol_method_exists(name: str) -> None:
    assert callable(getattr(httptools_impl.HttpToolsProtocol, name, None)), f"HttpToolsProtocol.{name} moved"


@pytest.mark.parametrize("name", ATTRIBUTES)
def test_protocol_attribute_is_set(name: str) -> None:
    source = inspect.getsource(httptools_impl.HttpToolsProtocol)
    assert f"self.{name} = " in source or f"self.{name}: " in source, f"HttpToolsProtocol no longer sets self.{name}"


def test_status_line_table() -> None:
    assert httptools_impl.STATUS_LINE[200].startswith(b"HTTP/1.1 200"), "uvicorn's STATUS_LINE changed shape"


def test_cycle_flags() -> None:
    source = inspect.getsource(httptools_impl.RequestResponseCycle)
    for name in ("keep_alive", "response_complete"):
        assert f"self.{name} = " in source, f"RequestResponseCycle.{name} moved"


def test_flow_and_server_state() -> None:
    assert "self.write_paused = " in inspect.getsource(flow_control.FlowControl), "FlowControl.write_paused moved"
    state = ServerState()
    assert isinstance(state.total_requests, int) and isinstance(state.default_headers, list)
