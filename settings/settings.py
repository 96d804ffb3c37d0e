# Sentry settings: `bin/sentry --config=settings/settings.py ...`.
#
# logan loads Sentry's defaults (sentry.conf.server) first, then executes this file with
# __file__ set. The database (and the secret key) live in settings_local.py beside this
# file, written by `cargo xtask switch-settings sqlite|postgres` with mode 0600: it may
# hold a password, so it is never committed.
import os

CONF_ROOT = os.path.dirname(os.path.abspath(__file__))

SENTRY_WEB_HOST = os.environ.get('SENTRY_WEB_HOST', '127.0.0.1')
SENTRY_WEB_PORT = int(os.environ.get('SENTRY_WEB_PORT', '9000'))
SENTRY_URL_PREFIX = os.environ.get(
    'SENTRY_URL_PREFIX', 'http://%s:%s' % (SENTRY_WEB_HOST, SENTRY_WEB_PORT))
SENTRY_PUBLIC = False
# Sentry 4 and 6 ask for this: no public sign-up on a migrated install.
SOCIAL_AUTH_CREATE_USERS = False

_local = os.path.join(CONF_ROOT, 'settings_local.py')
if not os.path.exists(_local):
    raise RuntimeError(
        '%s is missing: run `cargo xtask switch-settings sqlite` (or postgres) first' % _local)
execfile(_local)
