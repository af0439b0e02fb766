"""Page tokens and page bounds of the List* calls."""

from __future__ import annotations

from grpclib import GRPCError
from grpclib.const import Status

DEFAULT_PAGE_SIZE = 1000
MAX_PAGE_SIZE = 10000


def parse_page_token(token: str) -> int:
    """The offset a page token stands for; "" is the start. Raises INVALID_ARGUMENT."""
    if not token:
        return 0
    # Base-10 offset today; clients must treat it as opaque so it can change.
    if not (token.isascii() and token.isdigit() and len(token) <= 12):
        raise GRPCError(Status.INVALID_ARGUMENT, f"page_token: invalid page token {token!r}")
    return int(token)


def page_bounds(page_size: int, page_token: str, total: int) -> tuple[int, int, str]:
    """(start, end, next_page_token) of one page over ``total`` entries.

    A token past the end (the table shrank between pages) gives an empty last
    page rather than an error.
    """
    size = page_size or DEFAULT_PAGE_SIZE
    size = min(size, MAX_PAGE_SIZE)
    start = min(parse_page_token(page_token), total)
    end = min(start + size, total)
    return start, end, (str(end) if end < total else "")
