"""``python -m evloop_httpd``: see :mod:`evloop_httpd.cli`."""

import sys

from .cli import main

sys.exit(main(prog="python -m evloop_httpd"))
