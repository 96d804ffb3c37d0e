# -*- coding: utf-8 -*-
"""Rehearsal only: proves Sentry 4 serves the pre-migration data after `rollback` (bin/py, tag 1).

    bin/py prove4.py CONFIG BASE_URL STATE_JSON
STATE_JSON as for prove.py. Logs in over HTTP with the user's password, reads the project's
event stream, and counts events and groups through Sentry 4's own ORM on the settings' db.
Prints JSON facts.
"""
import cookielib
import json
import os
import sys
import urllib2

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sentry_setup import configure, login


def main():
    config, base, state_path = sys.argv[1], sys.argv[2].rstrip('/'), sys.argv[3]
    state = json.load(open(state_path))
    configure(config)
    facts = {}
    import pkg_resources
    from django.conf import settings
    facts['sentry_version'] = pkg_resources.get_distribution('sentry').version
    facts['engine'] = settings.DATABASES['default']['ENGINE']
    facts['db'] = settings.DATABASES['default']['NAME']

    jar = cookielib.CookieJar()
    opener = urllib2.build_opener(urllib2.HTTPCookieProcessor(jar))
    landed = login(opener, base, state['login']['username'], state['login']['password'])
    facts['login_ok'] = '/login/' not in landed

    # Sentry 4's stream lives at /<project>/ (slug or id, as the version routes it).
    facts['stream_ok'] = False
    for key in (state['project'], str(state['project_id'])):
        try:
            stream = opener.open('%s/%s/' % (base, key)).read()
        except urllib2.HTTPError:
            continue
        if state['expect'].encode('utf-8') in stream:
            facts['stream_ok'] = True
            facts['stream_url'] = '/%s/' % key
            break

    from sentry.models import Event, Group
    facts['events'] = Event.objects.count()
    facts['groups'] = Group.objects.count()
    json.dump(facts, sys.stdout, sort_keys=True)
    sys.stdout.write('\n')


if __name__ == '__main__':
    main()
