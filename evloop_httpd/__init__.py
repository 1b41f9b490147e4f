"""evloop_httpd: a static file server for HTTP/1.1 on one ``selectors`` event loop."""

__version__ = "0.1.0"
