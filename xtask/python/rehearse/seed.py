# -*- coding: utf-8 -*-
"""Rehearsal only: real Sentry 4 data through Sentry's own ORM (bin/py, tag 1).

    bin/py seed.py CONFIG accounts   -> creates users, teams, members, projects, keys, options;
                                        prints JSON {"dsns": [...], "login": {...}}
    bin/py seed.py CONFIG more       -> after an in-place upgrade: a new user, member, project,
                                        key; prints JSON {"dsns": [...]} for every project
    bin/py seed.py CONFIG finish     -> resolves and bookmarks some groups, deletes a team
                                        member and a project key (id gaps, as real installs
                                        have); prints JSON counts
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sentry_setup import configure

PASSWORD = 'rehearsal-p4ss'


def private_dsn(key):
    try:
        return key.get_dsn(public=False)
    except TypeError:  # Sentry 4.0: get_dsn() has no `public` and gives the private DSN
        return key.get_dsn()


def accounts():
    from django.contrib.auth.models import User
    from sentry.models import Team, TeamMember, Project, ProjectKey, ProjectOption, Option

    admin = User.objects.create_superuser('admin', 'admin@example.com', PASSWORD)
    users = [admin]
    for name in ['alice', 'bob', u'zoë', 'carol', 'dave']:
        users.append(User.objects.create_user(name.encode('ascii', 'ignore') or 'zoe', '%s@example.com' % name.encode('ascii', 'ignore'), PASSWORD))
    users[3].first_name = u'Zoë'
    users[3].save()
    if hasattr(admin, 'message_set'):
        # Django 1.3's user messages: the auth_message table 1.4 no longer has a model for.
        for text in [u'Welcome to Sentry', u'Your project was created']:
            admin.message_set.create(message=text)
    gone = User.objects.create_user('leaver', 'leaver@example.com', PASSWORD)
    gone.delete()  # a gap in auth_user ids

    teams = []
    for slug, owner in [('web', users[0]), ('backend', users[1])]:
        teams.append(Team.objects.create(slug=slug, name=slug.title(), owner=owner))
    for team in teams:
        for user in users[1:5]:
            TeamMember.objects.get_or_create(team=team, user=user)

    dsns = []
    specs = [('frontend', teams[0]), ('api', teams[1]), ('worker', teams[1]), (u'intérieur', teams[0])]
    for name, team in specs:
        project = Project.objects.create(name=name, slug=name.encode('ascii', 'ignore'), owner=users[0], team=team)
        # The key of the team's owner (a member; Sentry 4.10 fails on keys without a user).
        key, _ = ProjectKey.objects.get_or_create(project=project, user=team.owner)
        ProjectOption.objects.set_value(project, 'mail:subject_prefix', '[%s] ' % project.slug)
        dsns.append({'project_id': project.id, 'slug': project.slug, 'team': team.slug,
                     'dsn': private_dsn(key)})
    Option.objects.set_value('sentry:install-id', 'rehearsal')
    return {'dsns': dsns, 'login': {'username': 'admin', 'password': PASSWORD}}


def more():
    """Data added after an in-place upgrade: a new user, member, project, key, option."""
    from django.contrib.auth.models import User
    from sentry.models import Team, TeamMember, Project, ProjectKey, ProjectOption

    newcomer = User.objects.create_user('newcomer', 'newcomer@example.com', PASSWORD)
    web = Team.objects.get(slug='web')
    TeamMember.objects.get_or_create(team=web, user=newcomer)
    backend = Team.objects.get(slug='backend')
    project = Project.objects.create(name='late', slug='late', owner=backend.owner, team=backend)
    ProjectOption.objects.set_value(project, 'mail:subject_prefix', '[late] ')
    dsns = []
    for project in Project.objects.exclude(team=None).order_by('id'):
        key, _ = ProjectKey.objects.get_or_create(project=project, user=project.team.owner)
        dsns.append({'project_id': project.id, 'slug': project.slug, 'team': project.team.slug,
                     'dsn': private_dsn(key)})
    return {'dsns': dsns}


def finish():
    """Resolves and bookmarks groups, deletes a team member and a key: id gaps, as real
    installs have. Safe to run again after more data."""
    from sentry.models import Group, GroupBookmark, TeamMember, ProjectKey, Event
    from django.contrib.auth.models import User

    admin = User.objects.get(username='admin')
    groups = list(Group.objects.order_by('id'))
    for group in groups[::3]:
        group.status = 1  # resolved
        group.save()
    for group in groups[1::4]:
        GroupBookmark.objects.get_or_create(project=group.project, group=group, user=admin)
    members = [m for m in TeamMember.objects.order_by('-id') if m.user_id != m.team.owner_id]
    if members:
        members[0].delete()
    if groups:
        extra = ProjectKey.objects.create(project=groups[0].project, user=None)
        ProjectKey.objects.filter(id=extra.id).delete()
    return {'groups': len(groups), 'events': Event.objects.count(),
            'resolved': Group.objects.filter(status=1).count(),
            'bookmarks': GroupBookmark.objects.count()}


def main():
    config, command = sys.argv[1], sys.argv[2]
    configure(config)
    result = {'accounts': accounts, 'more': more, 'finish': finish}[command]()
    json.dump(result, sys.stdout, sort_keys=True)
    sys.stdout.write('\n')


if __name__ == '__main__':
    main()
