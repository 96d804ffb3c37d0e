# -*- coding: utf-8 -*-
"""Rehearsal only: configure Django exactly as bin/sentry does, then return to the caller; and
log in to Sentry's web service over HTTP as a user does."""
import re
import sys
import urllib
import urllib2


def configure(config_path):
    from django.core import management
    original = management.execute_from_command_line
    management.execute_from_command_line = lambda argv=None: None
    saved_argv = sys.argv
    sys.argv = ['sentry', '--config=' + config_path, 'help']
    from sentry.utils.runner import main
    try:
        main()
    except SystemExit:
        pass
    finally:
        management.execute_from_command_line = original
        sys.argv = saved_argv


def login(opener, base, username, password):
    """Posts Sentry's login form (4.x and 6.x alike) with its CSRF token; returns the URL the
    login lands on (still /login/ when it was refused)."""
    page = opener.open(base + '/login/').read()
    token = re.search(r"name='csrfmiddlewaretoken' value='([^']+)'", page) or re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)
    form = {'username': username.encode('utf-8'), 'password': password,
            'csrfmiddlewaretoken': token.group(1) if token else ''}
    request = urllib2.Request(base + '/login/', urllib.urlencode(form), {'Referer': base + '/login/'})
    return opener.open(request).geturl()
