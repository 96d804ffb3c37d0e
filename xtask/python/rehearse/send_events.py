# -*- coding: utf-8 -*-
"""Rehearsal only: sends real events over HTTP with the raven client of the installed buildout.

    bin/py send_events.py DSNS_JSON COUNT [TAG]
Messages at several levels, exceptions with stack frames, the HTTP/query/user interfaces,
non-ASCII text; every kind to every DSN; a few messages dated 30 days ago (a quiet group). Events differ per project (text, query, stack depth),
as different projects' code does: Sentry 4's SQLite schema keeps a unique index on
(logger, culprit, checksum) without the project, so identical events in two projects collide.
Prints the number sent.
"""
import datetime
import json
import logging
import sys

from raven import Client

logging.basicConfig(level=logging.ERROR)
QUIET_DAYS = 30
LEVELS = [logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR, logging.FATAL]


def fail(depth, tag):
    if depth == 0:
        raise ValueError(u'rehearsal failure %s — naïve café' % tag)
    return fail(depth - 1, tag)


def quiet(client, message, extra):
    """An event dated QUIET_DAYS ago (raven sends the date; Sentry keeps it)."""
    date = datetime.datetime.utcnow() - datetime.timedelta(days=QUIET_DAYS)
    try:
        client.captureMessage(message, date=date, extra=extra)
    except TypeError:  # a raven without `date`
        client.captureMessage(message, extra=extra)


def main():
    dsns = json.loads(open(sys.argv[1]).read())
    count = int(sys.argv[2])
    tag = sys.argv[3] if len(sys.argv) > 3 else 'a'
    clients = [Client(dsn) for dsn in dsns]
    for n in range(count):
        p = n % len(clients)
        client = clients[p]
        kind = (n // len(clients)) % 4  # every project gets every kind
        extra = {'n': n, 'tag': tag}
        if kind == 0 and n % 17 == 16:
            # A group last seen weeks ago: Sentry 6's stream hides it by default (5 days).
            quiet(client, u'quiet message %s p%d: last seen weeks ago' % (tag, p), extra)
        elif kind == 0:
            client.captureMessage(u'rehearsal message %s p%d #%d: ünïcödé ✓' % (tag, p, n % 17), level=LEVELS[n % 5], extra=extra)
        elif kind == 1:
            try:
                fail(3 + p, '%s-%d' % (tag, n % 11))
            except ValueError:
                client.captureException(extra=extra)
        elif kind == 2:
            client.captureQuery(query='SELECT * FROM rehearsal_p%d WHERE n = %d' % (p, n % 7), engine='psycopg2', extra=extra)
        else:
            client.capture('Message', message=u'request %s p%d %d' % (tag, p, n % 5), data={
                'sentry.interfaces.Http': {'url': 'http://example.com/p%d/%d' % (p, n % 5), 'method': 'POST',
                                           'data': {'q': u'ñ'}, 'query_string': 'a=1', 'headers': {'Referer': 'x'}},
                'sentry.interfaces.User': {'id': n % 3, 'username': u'usér%d' % (n % 3), 'email': 'u@example.com',
                                           'is_authenticated': True},
            }, extra=extra)
    sys.stdout.write('%d\n' % count)


if __name__ == '__main__':
    main()
