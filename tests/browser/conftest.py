"""The browser tests start the server, make the accounts and the admin client as
tests/test_server.py does: its fixtures, shared rather than copied."""

from ..test_server import accounts, admin, serve

__all__ = ["accounts", "admin", "serve"]
