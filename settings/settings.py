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

# Your Sentry 4 install's own settings: copy its config file (or at least TIME_ZONE, SECRET_KEY,
# SENTRY_URL_PREFIX and the mail settings) to sentry_conf.py beside this file (git-ignored, keep
# it 0600). This file sets no TIME_ZONE on your behalf: Sentry 4 stored every date as naive
# text in the zone it ran with, and `cargo xtask migrate` stops until the settings say which.
# Both buildout tags read it; settings_local.py, executed last, overrides only the database.
_conf = os.path.join(CONF_ROOT, 'sentry_conf.py')
if os.path.exists(_conf):
    execfile(_conf)

_local = os.path.join(CONF_ROOT, 'settings_local.py')
if not os.path.exists(_local):
    raise RuntimeError(
        '%s is missing: run `cargo xtask switch-settings sqlite` (or postgres) first' % _local)
execfile(_local)
