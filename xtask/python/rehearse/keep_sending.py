# -*- coding: utf-8 -*-
"""Rehearsal only: a raven client that keeps sending events through the cut-over.

    bin/py keep_sending.py DSNS_JSON OUT STOP_FILE NAME
Sends a message every 100 ms, round-robin over the DSNs, until STOP_FILE exists; appends one
JSON line per event to OUT: the client, its number, the event id and timestamp raven gave it,
the DSN's index, whether raven delivered it (the server answered 200) and, if not, why (what
raven logged: refused, timed out, an HTTP error, or skipped in its back-off), and when the send
began and ended. raven drops an event it could not deliver (and, after a failure, skips sending
for a while): as in production.
Runs under the raven of whichever bin/py runs it (2.0.5 for Sentry 4, 4.0.4 for Sentry 6).
"""
import json
import logging
import os
import sys
import time

import raven
from raven import Client

logging.basicConfig(level=logging.CRITICAL)


class FirstError(logging.Handler):
    """Keeps the first thing raven logs to `sentry.errors` for the event being sent."""

    def __init__(self):
        logging.Handler.__init__(self, logging.ERROR)
        self.first = None

    def emit(self, record):
        if self.first is None:
            self.first = record.getMessage()


ERRORS = FirstError()
_errors = logging.getLogger('sentry.errors')
_errors.setLevel(logging.ERROR)
_errors.propagate = False
_errors.handlers = [ERRORS]


class RecordingClient(Client):
    """Remembers the last event's id and timestamp, and whether raven delivered it."""

    def send(self, *args, **data):
        self.last = (data.get('event_id'), data.get('timestamp'))
        self.delivered = False
        return Client.send(self, *args, **data)

    def send_remote(self, url, data, headers=None):
        tried = self.state.should_try()
        Client.send_remote(self, url, data, headers or {})
        self.delivered = tried and self.state.status == self.state.ONLINE
        if not tried:
            ERRORS.first = "skipped: raven's back-off after a failed send"


def stamp(value):
    if hasattr(value, 'isoformat'):
        return value.isoformat()
    return value


def main():
    dsns = json.loads(open(sys.argv[1]).read())
    out = open(sys.argv[2], 'a')
    stop, name = sys.argv[3], sys.argv[4]
    if not raven.VERSION.startswith(('1.', '2.')):
        # raven 3+ sends from a background thread by default: its synchronous transport, so
        # that each send's outcome is known when captureMessage returns.
        dsns = ['sync+' + dsn for dsn in dsns]
    clients = [RecordingClient(dsn) for dsn in dsns]
    n = 0
    while not os.path.exists(stop):
        index = n % len(clients)
        client = clients[index]
        client.last, client.delivered = (None, None), False
        ERRORS.first = None
        started = time.time()
        client.captureMessage(u'cut-over %s #%d ✓' % (name, n), extra={'n': n})
        event_id, timestamp = client.last
        out.write(json.dumps({
            'client': name, 'version': raven.VERSION, 'n': n, 'dsn': index,
            'event_id': event_id, 'timestamp': stamp(timestamp),
            'message': u'cut-over %s #%d ✓' % (name, n), 'delivered': bool(client.delivered),
            'error': None if client.delivered else (ERRORS.first or 'not delivered'),
            'started': started, 'at': time.time(),
        }) + '\n')
        out.flush()
        n += 1
        time.sleep(0.1)


if __name__ == '__main__':
    main()
