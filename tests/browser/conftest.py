"""The browser tests start the server as tests/test_server.py does."""

from ..test_server import serve

__all__ = ["serve"]
