"""A web page for text-to-video search over an index folder (`hdvila serve`).

`service` answers checked requests (no web framework); `app` puts FastAPI and the page on top of it.
"""
from .service import BadRequest, NotFound, SearchService, ServeLimits

__all__ = ["SearchService", "ServeLimits", "BadRequest", "NotFound"]
