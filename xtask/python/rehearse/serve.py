# -*- coding: utf-8 -*-
"""Rehearsal only: runs Sentry's own HTTP service (what `sentry start http` runs).

    bin/py serve.py CONFIG
Sentry 4.10's service hands sys.argv to gunicorn, which rejects `start`'s own options
(`--noupgrade`), so we start the same SentryHTTPServer with an empty argv and no upgrade.
Host and port come from SENTRY_WEB_HOST / SENTRY_WEB_PORT (settings/settings.py).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sentry_setup import configure


def main():
    configure(sys.argv[1])
    sys.argv = [sys.argv[0]]
    from sentry.services.http import SentryHTTPServer
    SentryHTTPServer().run()


if __name__ == '__main__':
    main()
