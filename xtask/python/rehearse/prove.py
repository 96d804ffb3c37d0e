# -*- coding: utf-8 -*-
"""Rehearsal only: proves the migrated Sentry 6 works (bin/py, tag 2, server running).

    bin/py prove.py CONFIG BASE_URL STATE_JSON
STATE_JSON: {"login": {"username", "password"}, "team": slug, "project": slug,
             "project_id": id, "dsn": migrated DSN, "expect": text of a migrated event}
Logs in over HTTP with the migrated password, reads the project's event stream, sends a NEW
event with the installed raven to the migrated key, creates a project. Prints JSON facts.
"""
import cookielib
import json
import os
import sys
import time
import urllib2
import urlparse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sentry_setup import configure, login


def main():
    config, base, state_path = sys.argv[1], sys.argv[2].rstrip('/'), sys.argv[3]
    state = json.load(open(state_path))
    configure(config)
    facts = {}

    jar = cookielib.CookieJar()
    opener = urllib2.build_opener(urllib2.HTTPCookieProcessor(jar))
    landed = login(opener, base, state['login']['username'], state['login']['password'])
    facts['login_final_url'] = landed
    facts['login_ok'] = '/login/' not in landed and any(c.name == 'sentrysid' or 'session' in c.name for c in jar)

    stream = opener.open('%s/%s/%s/' % (base, state['team'], state['project'])).read()
    facts['stream_ok'] = state['expect'].encode('utf-8') in stream or state['expect'] in stream.decode('utf-8', 'replace')

    from sentry.models import Event, Project, Team
    # The age Sentry 6 gives the newest migrated event, through its own ORM (USE_TZ): minutes,
    # not hours, when the naive dates were read in the zone Sentry 4 wrote them in.
    from django.utils import timezone
    newest = Event.objects.order_by('-datetime')[0].datetime
    now = timezone.now()
    if timezone.is_naive(newest) != timezone.is_naive(now):
        newest = timezone.make_aware(newest, timezone.utc) if timezone.is_naive(newest) else timezone.make_naive(newest, timezone.utc)
    facts['newest_event_age_seconds'] = int((now - newest).total_seconds())
    facts['use_tz'] = bool(getattr(__import__('django.conf').conf.settings, 'USE_TZ', False))
    from raven import Client
    parts = urlparse.urlparse(state['dsn'])
    base_parts = urlparse.urlparse(base)
    dsn = '%s://%s:%s@%s%s' % (parts.scheme, parts.username, parts.password, base_parts.netloc, parts.path)
    marker = u'post-migration event %d ✓' % int(time.time())
    Client(dsn).captureMessage(marker)
    new_event = None
    for _ in range(50):
        found = list(Event.objects.filter(message__contains='post-migration event').order_by('-id')[:1])
        if found:
            new_event = found[0]
            break
        time.sleep(0.2)
    facts['new_event_id'] = new_event.id if new_event else None
    facts['new_event_project_id'] = new_event.project_id if new_event else None

    team = Team.objects.get(slug=state['team'])
    project = Project.objects.create(name='after-migration', slug='after-migration', team=team, owner=team.owner)
    facts['new_project_id'] = project.id
    json.dump(facts, sys.stdout, sort_keys=True)
    sys.stdout.write('\n')


if __name__ == '__main__':
    main()
