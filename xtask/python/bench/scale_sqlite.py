#!/usr/bin/env python3
"""Benchmark input: multiply a real Sentry 4.10 SQLite db's event tables K times, in place.

    python3 xtask/python/bench/scale_sqlite.py DB K

The method of shared/notes/benchmark.md: copy n (1..K-1) of every event-related row gets ids
shifted by n*max(id) of its table, foreign keys group_id/document_id shifted by the referenced
table's max, datetimes shifted n hours back (fractional seconds kept), `checksum` and
`message_id` re-prefixed with n as 8 hex digits, so every unique index (the stale SQLite-only
ones included) still holds. Users, teams, projects, keys, options are left as they are.
Take a copy of the db first: this writes to DB.
"""
import sqlite3
import sys

TABLES = [
    'sentry_groupedmessage', 'sentry_searchdocument', 'sentry_groupedmessage_views',
    'sentry_message', 'sentry_messagefiltervalue', 'sentry_messagecountbyminute',
    'sentry_searchtoken', 'sentry_projectcountbyminute',
]
FOREIGN = {'group_id': 'sentry_groupedmessage', 'document_id': 'sentry_searchdocument'}


def main():
    path, k = sys.argv[1], int(sys.argv[2])
    conn = sqlite3.connect(path)
    maxes = {t: conn.execute('SELECT COALESCE(MAX(id), 0) FROM %s' % t).fetchone()[0] for t in TABLES}
    for table in TABLES:
        columns = [(row[1], (row[2] or '').lower()) for row in conn.execute('PRAGMA table_info(%s)' % table)]
        names = ', '.join('"%s"' % c for c, _ in columns)
        for n in range(1, k):
            exprs = []
            for name, kind in columns:
                if name == 'id':
                    exprs.append('id + %d' % (n * maxes[table]))
                elif name in FOREIGN and FOREIGN[name] in maxes:
                    exprs.append('"%s" + %d' % (name, n * maxes[FOREIGN[name]]))
                elif kind == 'datetime':
                    exprs.append("CASE WHEN \"%s\" IS NULL THEN NULL ELSE strftime('%%Y-%%m-%%d %%H:%%M:', \"%s\", '-%d hours') || substr(\"%s\", 18) END" % (name, name, n, name))
                elif name in ('checksum', 'message_id'):
                    exprs.append("CASE WHEN \"%s\" IS NULL THEN NULL ELSE printf('%%08x', %d) || substr(\"%s\", 9) END" % (name, n, name))
                else:
                    exprs.append('"%s"' % name)
            verb = 'INSERT OR IGNORE' if table == 'sentry_projectcountbyminute' else 'INSERT'
            conn.execute('%s INTO %s (%s) SELECT %s FROM %s WHERE id <= %d' % (verb, table, names, ', '.join(exprs), table, maxes[table]))
        conn.commit()
    events = conn.execute('SELECT count(*) FROM sentry_message').fetchone()[0]
    rows = sum(conn.execute('SELECT count(*) FROM %s' % t).fetchone()[0] for t in TABLES)
    print('%s: %d events, %d rows in the event tables (x%d)' % (path, events, rows, k))


if __name__ == '__main__':
    main()
