# -*- coding: utf-8 -*-
"""Rehearsal only: compare the columns Sentry 4 stores encoded (gzipped or plain pickles) in two
PostgreSQL databases, decoded with Sentry's own field code (bin/py, tag 1).

    bin/py compare_encoded.py CONFIG DB_A DB_B

loaddata re-encodes these values (it unpickles and pickles again), so their bytes may differ
from what the copy engine carries over verbatim while meaning the same. Connection settings
come from the libpq variables (PGHOST, PGPORT, PGUSER, PGPASSWORD). Prints JSON:
{"columns": {"table.column": {"rows": N, "differ": [ids...]}}}.
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sentry_setup import configure

ENCODED = ('GzippedDictField', 'PickledObjectField')


def encoded_columns():
    from django.db.models import get_models
    out = []
    for model in get_models():
        for field in model._meta.fields:
            if any(cls.__name__ in ENCODED for cls in type(field).__mro__):
                out.append((model._meta.db_table, field.column, field))
    return out


def rows(conn, table, column):
    cur = conn.cursor()
    cur.execute('SELECT id, "%s" FROM "%s" ORDER BY id' % (column, table))
    return cur.fetchall()


def main():
    configure(sys.argv[1])
    import psycopg2
    a = psycopg2.connect(dbname=sys.argv[2])
    b = psycopg2.connect(dbname=sys.argv[3])
    result = {}
    for table, column, field in encoded_columns():
        left, right = rows(a, table, column), rows(b, table, column)
        differ = [id_ for id_, _ in left]
        if [id_ for id_, _ in left] == [id_ for id_, _ in right]:
            differ = [
                id_ for (id_, x), (_, y) in zip(left, right)
                if field.to_python(x) != field.to_python(y)
            ]
        result['%s.%s' % (table, column)] = {'rows': len(left), 'rows_b': len(right), 'differ': differ[:20]}
    json.dump({'columns': result}, sys.stdout, sort_keys=True)
    sys.stdout.write('\n')


if __name__ == '__main__':
    main()
