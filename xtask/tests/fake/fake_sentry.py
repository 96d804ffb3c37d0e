#!/usr/bin/env python3
"""A recording fake of bin/buildout, bin/sentry and bin/py for orchestration tests.

It appends its argv to $FAKE_CALLS (and its own and its parent's /proc cmdline to
$FAKE_CALLS.cmdline), then behaves like a tiny Sentry: dumpdata writes the
SQLite rows as a Django fixture, upgrade builds a small schema on PostgreSQL (with the demo
project), the helper's `models`/`load` work on that schema through psql. FAKE_FAIL=<what>
makes one call fail: dump-rest (dump-rest-and-report: and the report can't be saved), load-silently (a Django 1.4 style failure that exits 0),
truncate-dump, load-extra (adds a row, like Sentry's handlers), upgrade-pg (the PostgreSQL
upgrade), upgrade6.
"""
import datetime, json, os, re, sqlite3, subprocess, sys

ROOT = os.getcwd()
NAME = os.path.basename(sys.argv[0])
ARGS = sys.argv[1:]
FAIL = os.environ.get('FAKE_FAIL', '')
# FAKE_SLOW=<what>: that call takes 30 s (for a test that kills the run in the middle of it):
# dump-rest (after writing its output), load, upgrade-pg, upgrade6 (before their work).
SLOW = os.environ.get('FAKE_SLOW', '')


def slow(what):
    if SLOW == what:
        import time
        time.sleep(float(os.environ.get('FAKE_SLOW_SECS', '30')))

with open(os.environ['FAKE_CALLS'], 'a') as calls:
    calls.write(' '.join([NAME] + ARGS) + '\n')


def cmdline(pid):
    with open('/proc/%s/cmdline' % pid, 'rb') as f:
        return f.read().replace(b'\0', b' ').decode('utf-8', 'replace').strip()


# What `ps` shows of this child and of the process that started it (the tool), one line each.
with open(os.environ['FAKE_CALLS'] + '.cmdline', 'a') as procs:
    procs.write('%s\t%s\t%s\n' % (NAME, cmdline('self'), cmdline(os.getppid())))

MODELS = [
    {'model': 'auth.group', 'table': 'auth_group', 'm2m': {}},
    {'model': 'auth.user', 'table': 'auth_user', 'm2m': {'groups': 'auth_user_groups'}},
    {'model': 'sentry.event', 'table': 'sentry_message', 'm2m': {}},
    {'model': 'sentry.group', 'table': 'sentry_groupedmessage', 'm2m': {}},
    {'model': 'sentry.project', 'table': 'sentry_project', 'm2m': {}},
    {'model': 'sentry.projectkey', 'table': 'sentry_projectkey', 'm2m': {}},
    {'model': 'sentry.groupbookmark', 'table': 'sentry_groupbookmark', 'm2m': {}},
    {'model': 'sentry.messagecountbyminute', 'table': 'sentry_messagecountbyminute', 'm2m': {}},
    {'model': 'sentry.view', 'table': 'sentry_view', 'm2m': {}},
    {'model': 'south.migrationhistory', 'table': 'south_migrationhistory', 'm2m': {}},
]
SCHEMA = """
CREATE TABLE auth_group (id serial PRIMARY KEY, name varchar(80) UNIQUE);
CREATE TABLE auth_user (id serial PRIMARY KEY, username varchar(30) UNIQUE);
CREATE TABLE auth_user_groups (id serial PRIMARY KEY, user_id integer REFERENCES auth_user (id) DEFERRABLE INITIALLY DEFERRED, group_id integer REFERENCES auth_group (id) DEFERRABLE INITIALLY DEFERRED);
CREATE TABLE sentry_project (id serial PRIMARY KEY, name varchar(200), public boolean);
CREATE TABLE sentry_projectkey (id serial PRIMARY KEY, project_id integer REFERENCES sentry_project (id) DEFERRABLE INITIALLY DEFERRED);
CREATE TABLE sentry_groupedmessage (id serial PRIMARY KEY, project_id integer REFERENCES sentry_project (id) DEFERRABLE INITIALLY DEFERRED, checksum varchar(32), times_seen integer);
CREATE TABLE sentry_groupbookmark (id serial PRIMARY KEY, group_id integer REFERENCES sentry_groupedmessage (id) DEFERRABLE INITIALLY DEFERRED, user_id integer);
CREATE TABLE sentry_messagecountbyminute (id serial PRIMARY KEY, group_id integer REFERENCES sentry_groupedmessage (id) DEFERRABLE INITIALLY DEFERRED, date varchar(20), times_seen integer);
CREATE TABLE sentry_message (id serial PRIMARY KEY, group_id integer REFERENCES sentry_groupedmessage (id) DEFERRABLE INITIALLY DEFERRED, datetime timestamp with time zone);
CREATE INDEX sentry_message_group_id ON sentry_message (group_id);
CREATE TABLE sentry_team (id serial PRIMARY KEY, name varchar(64));
CREATE TABLE sentry_view (id serial PRIMARY KEY, path varchar(100));
CREATE TABLE south_migrationhistory (id serial PRIMARY KEY, app_name varchar(255), migration varchar(255));
INSERT INTO sentry_project (name) VALUES ('Sentry (Internal)');
INSERT INTO south_migrationhistory (app_name, migration) VALUES ('sentry', '0062_fake');
"""


def south(*lines, sleep=0):
    """Prints `lines` on stdout at once (as South does, unbuffered), then takes `sleep` seconds."""
    for line in lines:
        sys.stdout.write(line + '\n')
    sys.stdout.flush()
    if sleep:
        import time
        time.sleep(sleep)


def settings():
    # Like settings.py: settings_local.py beside the --config file.
    config = next((arg[len('--config='):] for arg in ARGS if arg.startswith('--config=')),
                  'settings/settings.py')
    scope = {}
    with open(os.path.join(ROOT, os.path.dirname(config), 'settings_local.py')) as f:
        exec(f.read(), scope)
    db = scope['DATABASES']['default']
    # The file holds Python 2 byte strings ('\xc3\xa9' for a UTF-8 'é'): Python 3 reads those
    # escapes as code points 0-255, so take them back to the bytes Python 2 would hold.
    db['NAME'] = db['NAME'].encode('latin-1').decode('utf-8')
    return db


def psql_value(sql, db):
    env = dict(os.environ, PGPASSWORD=db['PASSWORD'])
    out = subprocess.run(['psql', '-X', '-q', '-A', '-t', '-h', db['HOST'], '-p', db['PORT'],
                          '-U', db['USER'], '-d', db['NAME'], '-c', sql], text=True, env=env, check=True,
                         stdout=subprocess.PIPE)
    return out.stdout.strip()


def psql(sql, db):
    env = dict(os.environ, PGPASSWORD=db['PASSWORD'])
    subprocess.run(['psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-h', db['HOST'], '-p', db['PORT'],
                    '-U', db['USER'], '-d', db['NAME']], input=sql, text=True, env=env, check=True,
                   stdout=subprocess.DEVNULL)


# Django 1.4's SQLite converters (django/db/backends/sqlite3/base.py) and parse_datetime
# (django/utils/dateparse.py, its regexes as they are; USE_TZ off): a converter gets the bytes
# as stored; a string the pattern does not match reads as None; an invalid one raises.
DATETIME_RE = re.compile(
    r'(?P<year>\d{4})-(?P<month>\d{1,2})-(?P<day>\d{1,2})'
    r'[T ](?P<hour>\d{1,2}):(?P<minute>\d{1,2})'
    r'(?::(?P<second>\d{1,2})(?:\.(?P<microsecond>\d{1,6})\d{0,6})?)?'
    r'(?P<tzinfo>Z|[+-]\d{1,2}:\d{1,2})?$', re.ASCII
)


def parse_datetime(value):
    match = DATETIME_RE.match(value.decode('utf-8'))
    if match:
        kw = match.groupdict()
        if kw['microsecond']:
            kw['microsecond'] = kw['microsecond'].ljust(6, '0')
        tzinfo = kw.pop('tzinfo')
        if tzinfo == 'Z':
            tzinfo = datetime.timezone.utc
        elif tzinfo is not None:
            offset = 60 * int(tzinfo[1:3]) + int(tzinfo[4:6])
            if tzinfo[0] == '-':
                offset = -offset
            tzinfo = datetime.timezone(datetime.timedelta(minutes=offset))
        kw = dict((k, int(v)) for k, v in kw.items() if v is not None)
        kw['tzinfo'] = tzinfo
        return datetime.datetime(**kw)


sqlite3.register_converter('bool', lambda s: s == b'1')
sqlite3.register_converter('datetime', parse_datetime)


def json_value(value):
    """DjangoJSONEncoder: datetimes in ISO format cut to milliseconds, UTC as `Z`."""
    if isinstance(value, datetime.datetime):
        text = value.isoformat()
        if value.microsecond:
            text = text[:23] + text[26:]
        if text.endswith('+00:00'):
            text = text[:-6] + 'Z'
        return text
    return value


def dumpdata(auth):
    db = settings()
    conn = sqlite3.connect(db['NAME'], detect_types=sqlite3.PARSE_DECLTYPES)
    objects = []
    for model in MODELS:
        if model['model'].startswith('auth.') != auth:
            continue
        cur = conn.execute('SELECT * FROM %s ORDER BY id' % model['table'])
        names = [d[0] for d in cur.description]
        for row in cur.fetchall():
            fields = dict(zip(names[1:], [json_value(v) for v in row[1:]]))
            for field, table in model['m2m'].items():
                fields[field] = [r[0] for r in conn.execute('SELECT group_id FROM %s WHERE user_id = ?' % table, (row[0],))]
            objects.append({'pk': row[0], 'model': model['model'], 'fields': fields})
    text = json.dumps(objects)
    if FAIL == 'truncate-dump' and not auth:
        text = text[: len(text) // 2]
    sys.stdout.write(text)


def time_zone():
    """TIME_ZONE as Sentry reads it: the install's own settings beside settings.py."""
    scope = {}
    conf = os.path.join(ROOT, 'settings', 'sentry_conf.py')
    if os.path.exists(conf):
        with open(conf) as f:
            exec(f.read(), scope)
    return scope.get('TIME_ZONE', 'UTC')


def load(paths):
    db = settings()
    # As Django 1.4's PostgreSQL backend (USE_TZ off): the session reads naive times in TIME_ZONE.
    statements = ['BEGIN;', "SET TIME ZONE '%s';" % time_zone()]
    count = 0
    by_model = {m['model']: m for m in MODELS}
    for path in paths:
        for obj in json.load(open(path)):
            model = by_model[obj['model']]
            fields = {k: v for k, v in obj['fields'].items() if k not in model['m2m']}
            cols = ['id'] + list(fields)
            vals = [str(obj['pk'])] + ['NULL' if v is None else "'%s'" % str(v).replace("'", "''") for v in fields.values()]
            statements.append('INSERT INTO %s (%s) VALUES (%s);' % (model['table'], ', '.join(cols), ', '.join(vals)))
            for field, table in model['m2m'].items():
                for other in obj['fields'].get(field, []):
                    statements.append('INSERT INTO %s (user_id, group_id) VALUES (%s, %s);' % (table, obj['pk'], other))
            count += 1
    if FAIL == 'load-extra':
        statements.append("INSERT INTO sentry_projectkey (project_id) SELECT min(id) FROM sentry_project;")
    statements.append('COMMIT;')
    if FAIL == 'load-silently':
        sys.stderr.write("Problem installing fixture 'dumps/dumpdata.json': Traceback (most recent call last):\n"
                         "IntegrityError: duplicate key value violates unique constraint \"sentry_teammember_team_id_uniq\"\n")
        return
    psql('\n'.join(statements), db)
    sys.stdout.write('Installed %d object(s) from %d fixture(s)\n' % (count, len(paths)))


def upgrade6(db, set_based):
    """Sentry 6's upgrade: `bin/sentry upgrade` as shipped, or the helper's (`set_based`)."""
    slow('upgrade6')
    # Like South: an applied migration is not applied again.
    if psql_value("SELECT count(*) FROM south_migrationhistory WHERE migration = '0100_fake'", db) != '0':
        return
    if FAIL == 'upgrade6':
        sys.stderr.write('Traceback (most recent call last):\nDatabaseError: boom\n')
        sys.exit(1)
    # Like Sentry 6: drops views, a key per project, and migration 0083's merge of
    # duplicate groups (same project and checksum) into the lowest id.
    merge = """
        CREATE TEMP TABLE dupes AS SELECT g.id, (SELECT min(o.id) FROM sentry_groupedmessage o
            WHERE o.project_id = g.project_id AND o.checksum = g.checksum) AS twin
            FROM sentry_groupedmessage g;
        DELETE FROM dupes WHERE id = twin;
        UPDATE sentry_message m SET group_id = d.twin FROM dupes d WHERE m.group_id = d.id;
        UPDATE sentry_groupedmessage g SET times_seen = g.times_seen + s.n
            FROM (SELECT d.twin, sum(o.times_seen) AS n FROM dupes d JOIN sentry_groupedmessage o ON o.id = d.id GROUP BY 1) s
            WHERE g.id = s.twin;
        UPDATE sentry_messagecountbyminute c SET times_seen = c.times_seen + o.times_seen
            FROM sentry_messagecountbyminute o JOIN dupes d ON d.id = o.group_id
            WHERE c.group_id = d.twin AND c.date = o.date;
        DELETE FROM sentry_messagecountbyminute o USING dupes d, sentry_messagecountbyminute c
            WHERE o.group_id = d.id AND c.group_id = d.twin AND c.date = o.date;
        UPDATE sentry_messagecountbyminute o SET group_id = d.twin FROM dupes d WHERE o.group_id = d.id;
        DELETE FROM sentry_groupbookmark b USING dupes d WHERE b.group_id = d.id;
        DELETE FROM sentry_groupedmessage g USING dupes d WHERE g.id = d.id;
    """
    if FAIL == 'upgrade6-loses':
        merge += "DELETE FROM sentry_message WHERE id = (SELECT max(id) FROM sentry_message);"
        merge += "DELETE FROM sentry_groupbookmark WHERE id = (SELECT max(id) FROM sentry_groupbookmark);"
    # Like Sentry 6's schema: slugs for teams and projects, a project's team, a
    # group's last_seen (here its newest event's time).
    schema6 = """
        ALTER TABLE sentry_team ADD COLUMN slug text;
        UPDATE sentry_team SET slug = lower(name);
        ALTER TABLE sentry_project ADD COLUMN slug text, ADD COLUMN team_id integer;
        UPDATE sentry_project SET slug = lower(name);
        ALTER TABLE sentry_groupedmessage ADD COLUMN last_seen timestamp with time zone;
        UPDATE sentry_groupedmessage g SET last_seen = coalesce(
            (SELECT max(datetime) FROM sentry_message m WHERE m.group_id = g.id), now());
    """
    # South's lines as Sentry 6's upgrade prints them, each migration taking its time.
    south('Migrating...', 'Running migrations for djcelery:')
    south(' > djcelery:0004_v30_changes', sleep=0.05)
    south(' - Loading initial data for djcelery.', 'Installed 0 object(s) from 0 fixture(s)',
          'Running migrations for sentry:')
    south(' > sentry:0065_create_default_project_key', sleep=0.4)
    south(' > sentry:0083_migrate_dupe_groups')
    if set_based:
        south('sentry-migrate: 0083_migrate_dupe_groups set-based: 9 groups walked, 1 set(s) of duplicates merged, 1 group(s) merged into their survivor, in 0.0s')
    psql("BEGIN; DROP TABLE sentry_view; INSERT INTO sentry_projectkey (project_id) SELECT id FROM sentry_project;" + schema6 +
         "INSERT INTO south_migrationhistory (app_name, migration) VALUES ('sentry', '0100_fake');" + merge + "COMMIT;", db)
    south('Merging duplicate events for <Group: fake>', sleep=0.8)
    south(' > sentry:0100_fake', sleep=0.2)
    south(' - Loading initial data for sentry.', 'Installed 0 object(s) from 0 fixture(s)', '',
          'Synced:', ' > django.contrib.auth', '', 'Migrated:', ' - sentry')


def main():
    if NAME == 'buildout':
        cfg = ARGS[1]
        with open(os.path.join(ROOT, 'bin', '.tag'), 'w') as f:
            f.write('6' if 'tag2' in cfg else '4')
        # Like buildout: scripts that name the Sentry egg they run.
        egg = 'sentry-6.4.4-py2.7.egg' if 'tag2' in cfg else 'sentry-4.10.0-py2.7.egg'
        source = open(os.path.join(ROOT, 'bin', 'buildout')).read()
        for script in ('sentry', 'py'):
            path = os.path.join(ROOT, 'bin', script)
            with open(path, 'w') as f:
                f.write(source + "\n# sys.path[0:0] = ['/srv/eggs/%s']\n" % egg)
            os.chmod(path, 0o755)
        return
    if NAME == 'py' and ARGS[1] == 'check-syntax':
        # The helper's own code (it needs no Django), run by this Python.
        sys.path.insert(0, os.path.dirname(os.path.abspath(ARGS[0])))
        import sentry_helper
        sys.exit(sentry_helper.check_syntax_command(ARGS[2:]))
    tag = open(os.path.join(ROOT, 'bin', '.tag')).read()
    if NAME == 'py':
        command = ARGS[2]
        if command == 'models':
            json.dump(MODELS, sys.stdout)
        elif command == 'load':
            slow('load')
            load(ARGS[3:])
        elif command == 'upgrade' and tag == '6':
            if ARGS[3:] == ['--sentry-own']:
                south('sentry-migrate: every migration as Sentry ships it (--sentry-own)')
            else:
                south('sentry-migrate: sentry.migrations.0083_migrate_dupe_groups runs set-based (%s)'
                      % os.path.join(os.path.dirname(ARGS[0]), 'merge_dupe_groups.sql'))
            upgrade6(settings(), set_based=ARGS[3:] != ['--sentry-own'])
        return
    command = ARGS[1]
    db = settings()
    if command == 'upgrade' and 'postgresql' in db['ENGINE']:
        if tag == '6':
            upgrade6(db, set_based=False)
        else:
            slow('upgrade-pg')
            if FAIL == 'upgrade-pg':
                sys.stderr.write('Traceback (most recent call last):\nOperationalError: could not connect to server\n')
                sys.exit(1)
            if psql_value("SELECT count(*) FROM pg_tables WHERE tablename = 'sentry_project'", db) == '0':
                psql(SCHEMA, db)
    elif command == 'dumpdata':
        if FAIL in ('dump-rest', 'dump-rest-and-report') and '--exclude' in ARGS:
            if FAIL == 'dump-rest-and-report':
                # The report cannot be rewritten after this step: a folder sits in its place.
                report = os.path.join(ROOT, 'dumps', 'report.md')
                if os.path.isfile(report):
                    os.remove(report)
                os.makedirs(os.path.join(report, 'in-the-way'), exist_ok=True)
            sys.stderr.write('Traceback (most recent call last):\nOperationalError: disk I/O error\n')
            sys.exit(1)
        dumpdata('--exclude' not in ARGS)
        if '--exclude' in ARGS:
            sys.stdout.flush()
            slow('dump-rest')


main()
