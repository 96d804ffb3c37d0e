# -*- coding: utf-8 -*-
"""sentry-migrate's helper: run by `cargo xtask migrate` with buildout's bin/py (Sentry 4 on sys.path,
or Sentry 6 for `upgrade`).

    bin/py xtask/python/sentry_helper.py --config=settings/settings.py models
        Prints, as JSON, every model dumpdata writes: its fixture label, its table, and the
        tables of its many-to-many fields (which dumpdata writes as lists inside the object).

    bin/py xtask/python/sentry_helper.py --config=settings/settings.py load A.json B.json
        Runs Django's `loaddata A.json B.json` (one transaction, so PostgreSQL checks the
        deferred foreign keys once at commit) with Sentry 4's post_save side-effect handlers
        disconnected. Those handlers ignore raw=True and insert teams, members and keys during
        loaddata; with them connected, a load fails on ids with gaps or silently adds rows.

    bin/py xtask/python/sentry_helper.py --config=settings/settings.py upgrade [--sentry-own]
        Sentry 6's `sentry upgrade --noinput` (`syncdb --migrate`, non-interactive), every
        migration as South runs it, in the same order and process, except that migration
        0083_migrate_dupe_groups, which walks every group in Python, runs set-based:
        merge_dupe_groups.sql beside this file, then the merged groups deleted with that
        migration's own frozen ORM (Django's cascade), in South's transaction of 0083, which
        records it as applied. `--sentry-own` runs Sentry's migration unchanged.

    bin/py xtask/python/sentry_helper.py --config=settings/settings.py web-address
        Prints, as JSON, the host and port Sentry's web service listens on, as `sentry start`
        reads them: Sentry 4's sentry.conf.settings.WEB_HOST/WEB_PORT (SENTRY_WEB_HOST/PORT of
        the settings, or Sentry 4's defaults), Sentry 6's SENTRY_WEB_HOST/SENTRY_WEB_PORT.

    bin/py xtask/python/sentry_helper.py check-syntax FILE...
        Compiles each settings file (nothing runs): one line per file that is not valid
        Python 2, exit 1 if any. Preflight runs it before anything is touched.

Settings are loaded exactly as bin/sentry loads them (logan's run_app); the helper takes the
place of the Django command dispatch, which logan calls once settings are configured.
"""
import json
import os
import sys

# (dispatch_uid, sender model) of Sentry 4's handlers that must not run during a load.
SIDE_EFFECT_HANDLERS = [
    ('create_team_and_keys_for_project', 'Project'),
    ('create_team_member_for_owner', 'Team'),
    ('create_key_for_team_member', 'TeamMember'),
    ('update_document', 'Group'),
]


def models_command():
    from django.db import router, DEFAULT_DB_ALIAS
    from django.db.models import get_models
    out = []
    for model in get_models():
        opts = model._meta
        # The models dumpdata writes (Django 1.4: no proxies, only syncdb-able ones).
        if opts.proxy or not router.allow_syncdb(DEFAULT_DB_ALIAS, model):
            continue
        m2m = {}
        for field in opts.many_to_many:
            through = field.rel.through
            if through is not None and through._meta.auto_created:
                m2m[field.name] = through._meta.db_table
        out.append({
            'model': '%s.%s' % (opts.app_label, opts.object_name.lower()),
            'table': opts.db_table,
            'm2m': m2m,
        })
    out.sort(key=lambda it: it['model'])
    json.dump(out, sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write('\n')


def load_command(fixtures):
    from django.core.management import call_command
    from django.db.models.signals import post_save
    from django.dispatch.dispatcher import _make_id
    import sentry.models

    for dispatch_uid, sender_name in SIDE_EFFECT_HANDLERS:
        sender = getattr(sentry.models, sender_name, None)
        key = (dispatch_uid, _make_id(sender))
        if sender is None or not any(lookup == key for lookup, _ in post_save.receivers):
            sys.stderr.write('sentry-migrate: handler %s of %s is not connected here\n' % (dispatch_uid, sender_name))
            continue
        post_save.disconnect(sender=sender, dispatch_uid=dispatch_uid)
        sys.stderr.write('sentry-migrate: disconnected %s of %s\n' % (dispatch_uid, sender_name))
    call_command('loaddata', *fixtures, verbosity=1)
    sys.stdout.flush()


MERGE_SQL = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'merge_dupe_groups.sql')
DUPE_MIGRATION = 'sentry.migrations.0083_migrate_dupe_groups'


def set_based_forwards(self, orm):
    """0083's forwards(), set-based (merge_dupe_groups.sql says how each of its points is kept)."""
    import time
    from django.db import connection
    started = time.time()
    with open(MERGE_SQL) as f:
        sql = f.read()
    connection.cursor()  # opens the connection South's transaction is on
    cursor = connection.connection.cursor()  # psycopg2's own: the script is sent as it is
    cursor.execute(sql)
    cursor.execute('SELECT count(*) FROM sentry_groupedmessage')
    groups = cursor.fetchone()[0]
    cursor.execute('SELECT other_id FROM sentry_migrate_0083_merge ORDER BY other_id')
    others = [row[0] for row in cursor.fetchall()]
    cursor.execute('SELECT count(DISTINCT survivor_id) FROM sentry_migrate_0083_merge')
    sets = cursor.fetchone()[0]
    # The merged groups go as `other.delete()` takes them in the migration: Django's collector
    # over the frozen models (bookmarks, meta, search documents, activity... go with them).
    Group = orm['sentry.Group']
    for at in range(0, len(others), 1000):
        Group.objects.filter(id__in=others[at:at + 1000]).delete()
    sys.stdout.write(
        'sentry-migrate: 0083_migrate_dupe_groups set-based: %d groups walked, %d set(s) of '
        'duplicates merged, %d group(s) merged into their survivor, in %.1fs\n'
        % (groups, sets, len(others), time.time() - started))
    sys.stdout.flush()


def upgrade_command(sentry_own):
    from django.core.management import call_command
    if not sentry_own:
        # South asks its Migration wrapper for a migration's forwards() when it runs it (it
        # reloads migration modules, so the module's own class cannot be patched).
        import types
        from south.migration import base
        south_forwards = base.Migration.forwards

        def forwards(migration):
            if migration.full_name() == DUPE_MIGRATION:
                return types.MethodType(set_based_forwards, migration.migration_instance())
            return south_forwards(migration)
        base.Migration.forwards = forwards
        sys.stdout.write('sentry-migrate: %s runs set-based (%s)\n' % (DUPE_MIGRATION, MERGE_SQL))
    else:
        sys.stdout.write('sentry-migrate: every migration as Sentry ships it (--sentry-own)\n')
    sys.stdout.flush()
    # What Sentry 6.4.4's `sentry upgrade --noinput` runs (sentry/management/commands/upgrade.py).
    call_command('syncdb', migrate=True, interactive=False)


def check_syntax_command(paths):
    """Compiles each settings file as this Python (2.7 under bin/py) would: one line per file
    that is not valid Python. Nothing is executed, so nothing is imported or connected."""
    bad = []
    for path in paths:
        try:
            with open(path) as f:
                source = f.read()
            compile(source, path, 'exec')
        except SyntaxError as e:
            bad.append('%s is not valid Python (line %s: %s)' % (path, e.lineno, e.msg))
        except (IOError, OSError) as e:
            bad.append('%s cannot be read: %s' % (path, e))
    for line in bad:
        sys.stdout.write(line + '\n')
    return 1 if bad else 0


def web_address_command():
    try:
        from sentry.conf import settings as sentry_settings
        host, port = sentry_settings.WEB_HOST, sentry_settings.WEB_PORT
    except (ImportError, AttributeError):
        from django.conf import settings
        host, port = settings.SENTRY_WEB_HOST, settings.SENTRY_WEB_PORT
    sys.stdout.write(json.dumps({'host': host, 'port': int(port)}) + '\n')


def main():
    args = sys.argv[1:]
    if args and args[0] == 'check-syntax':
        sys.exit(check_syntax_command(args[1:]))
    logan_args = [arg for arg in args if arg.startswith('--config')]
    rest = [arg for arg in args if not arg.startswith('--config')]
    if not rest or rest[0] not in ('models', 'load', 'upgrade', 'web-address'):
        sys.stderr.write(__doc__)
        sys.exit(2)
    command, command_args = rest[0], rest[1:]

    from django.core import management

    def dispatch(argv=None):
        if command == 'models':
            models_command()
        elif command == 'web-address':
            web_address_command()
        elif command == 'upgrade':
            upgrade_command('--sentry-own' in command_args)
        else:
            load_command(command_args)

    management.execute_from_command_line = dispatch
    # logan needs a command name after its options; ours is dispatched above instead.
    sys.argv = ['sentry'] + logan_args + ['help']
    from sentry.utils.runner import main as sentry_main
    sentry_main()


if __name__ == '__main__':
    main()
