# -*- coding: utf-8 -*-
"""Rehearsal on a user's db only: proves the migrated Sentry 6 works (bin/py, tag 2, server running).

    bin/py prove_db.py CONFIG BASE_URL STATE_JSON
STATE_JSON: {"login": USERNAME or null, "projects": [project ids],
             "old_max_event": id, "old_max_group": id, "old_max_key": id}
The password is never in STATE_JSON: with a USERNAME it is read from SENTRY_REHEARSE_PASSWORD;
without one a temporary superuser is created through Sentry 6's ORM, in the throwaway target only.
Logs in over HTTP, reads every project's event stream, sends a NEW event with the installed raven
through a migrated key of every project, and prints JSON facts per project.
"""
import binascii
import cookielib
import json
import os
import re
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
    from django.contrib.auth import get_user_model  # Sentry 6: sentry.User
    from sentry.models import Event, Project, ProjectKey
    from raven import Client

    facts = {'projects': {}}
    if state['login']:
        username = state['login']
        password = os.environ.get('SENTRY_REHEARSE_PASSWORD', '')
        facts['login_user'] = username
        facts['temporary_user'] = False
    else:
        username = 'rehearsal-%s' % binascii.hexlify(os.urandom(4))
        password = binascii.hexlify(os.urandom(16))
        get_user_model().objects.create_superuser(username, 'rehearsal@localhost', password)
        facts['login_user'] = username
        facts['temporary_user'] = True

    if state.get('browser_login'):
        # For the browser's look after this script (owner-only, removed by the caller).
        fd = os.open(state['browser_login'], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.write(fd, json.dumps({'username': username, 'password': password}))
        os.close(fd)

    jar = cookielib.CookieJar()
    opener = urllib2.build_opener(urllib2.HTTPCookieProcessor(jar))
    final = login(opener, base, username, password)
    facts['login_final_url'] = final
    facts['login_ok'] = '/login/' not in final and any(c.name == 'sentrysid' or 'session' in c.name for c in jar)

    base_parts = urlparse.urlparse(base)
    markers = {}
    for project_id in state['projects']:
        out = {}
        facts['projects'][str(project_id)] = out
        project = Project.objects.get(id=project_id)
        out['slug'] = project.slug
        out['team'] = project.team.slug if project.team_id else None
        # The stream: which migrated groups of this project it lists. A project without a team
        # (a long-lived install's internal `default` project) has no stream page in Sentry 6.
        if not out['team']:
            out['no_team'] = True
        else:
            try:
                # The stream shows the last 5 days by default: ask for every group seen since 1970.
                url = '%s/%s/%s/?df=1970-01-01' % (base, out['team'], project.slug)
                page = opener.open(url).read()
                listed = sorted(set(int(n) for n in re.findall(r'/group/(\d+)/', page)))
                if not listed and state.get('pages'):
                    with open(os.path.join(state['pages'], 'stream-%d.html' % project_id), 'w') as f:
                        f.write(page)
                out['stream_url'] = url
                out['stream_groups'] = len(listed)
                out['stream_migrated_groups'] = len([n for n in listed if n <= state['old_max_group']])
            except Exception as exc:  # a 500 or 404 is a finding, not a crash
                out['stream_error'] = '%s: %s' % (type(exc).__name__, exc)
        # A migrated key (the oldest): the DSN clients out there already have.
        keys = list(ProjectKey.objects.filter(project=project, id__lte=state['old_max_key']).order_by('id')[:1])
        if not keys:
            out['key_error'] = 'no migrated key'
            continue
        key = keys[0]
        out['key_id'] = key.id
        dsn = key.get_dsn(public=False)
        parts = urlparse.urlparse(dsn)
        dsn = '%s://%s:%s@%s%s' % (parts.scheme, parts.username, parts.password, base_parts.netloc, parts.path)
        marker = u'rehearsal post-migration event p%d %d' % (project_id, int(time.time()))
        markers[project_id] = marker
        Client(dsn).captureMessage(marker)

    for project_id, marker in markers.items():
        out = facts['projects'][str(project_id)]
        found = []
        for _ in range(50):
            found = list(Event.objects.filter(message__contains=marker).order_by('-id')[:1])
            if found:
                break
            time.sleep(0.2)
        out['new_event_id'] = found[0].id if found else None
        out['new_event_project_id'] = found[0].project_id if found else None
    json.dump(facts, sys.stdout, sort_keys=True)
    sys.stdout.write('\n')


if __name__ == '__main__':
    main()
