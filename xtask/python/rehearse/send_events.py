# -*- coding: utf-8 -*-
"""Rehearsal only: sends real events over HTTP with the raven client of the installed buildout.

    bin/py send_events.py DSNS_JSON COUNT [TAG]
Messages at several levels, exceptions with stack frames, the HTTP/query/user interfaces,
non-ASCII text; spread over every DSN. Prints the number sent.
"""
import json
import logging
import sys

from raven import Client

logging.basicConfig(level=logging.ERROR)
LEVELS = [logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR, logging.FATAL]


def fail(depth, tag):
    if depth == 0:
        raise ValueError(u'rehearsal failure %s — naïve café' % tag)
    return fail(depth - 1, tag)


def main():
    dsns = json.loads(open(sys.argv[1]).read())
    count = int(sys.argv[2])
    tag = sys.argv[3] if len(sys.argv) > 3 else 'a'
    clients = [Client(dsn) for dsn in dsns]
    for n in range(count):
        client = clients[n % len(clients)]
        kind = (n // len(clients)) % 4  # every project gets every kind
        extra = {'n': n, 'tag': tag}
        if kind == 0:
            client.captureMessage(u'rehearsal message %s #%d: ünïcödé ✓' % (tag, n % 17), level=LEVELS[n % 5], extra=extra)
        elif kind == 1:
            try:
                fail(3, '%s-%d' % (tag, n % 11))
            except ValueError:
                client.captureException(extra=extra)
        elif kind == 2:
            client.captureQuery(query='SELECT * FROM rehearsal WHERE n = %d' % (n % 7), engine='psycopg2', extra=extra)
        else:
            client.capture('Message', message=u'request %s %d' % (tag, n % 5), data={
                'sentry.interfaces.Http': {'url': 'http://example.com/p/%d' % (n % 5), 'method': 'POST',
                                           'data': {'q': u'ñ'}, 'query_string': 'a=1', 'headers': {'Referer': 'x'}},
                'sentry.interfaces.User': {'id': n % 3, 'username': u'usér%d' % (n % 3), 'email': 'u@example.com',
                                           'is_authenticated': True},
            }, extra=extra)
    sys.stdout.write('%d\n' % count)


if __name__ == '__main__':
    main()
