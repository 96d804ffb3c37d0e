# -*- coding: utf-8 -*-
"""Rehearsal only: sends, over HTTP with the buildout's raven, events whose values PostgreSQL
refuses or that do not fit Sentry's columns (SQLite enforces neither varchar(n) nor "no NUL",
and Sentry 4.10 stores what clients send).

    bin/py send_bad_values.py DSNS_JSON TAG
To every DSN (project p), PER_PROJECT events:
  * three events of one group whose `url` tag values are 260 characters and share their
    first 220 (a cut to sentry_filtervalue/sentry_messagefiltervalue.value's varchar(200)
    makes them collide), sent by a client whose server_name is 150 characters (varchar(128))
    with a 4-byte character at the 128th, and whose site is 300 characters; the message has
    an emoji. Sentry's server/site tag plugins also store both as tag values;
  * a message with a NUL character (u'before\\x00after');
  * a server_name of exactly 128 characters, one a 4-byte emoji (131 bytes): it fits a
    character limit (PostgreSQL's varchar) but not a byte limit.
Every value (server names too: Sentry's server plugin makes them tag values) names TAG and
the project, and each project gets its own logger, so no two projects' events collide on
Sentry 4's SQLite-only unique indexes without the project (sentry_groupedmessage(logger,
culprit, checksum); sentry_filtervalue(key, value) in long-lived installs). raven 2.0.5 overwrites data['server_name'] with the client's name and
data['tags'] with the `tags=` argument, so both go through Client(name=...) and tags=.
Prints JSON: {"sent": {dsn: count}, "server_name_128": [...]} (the 128-character names).
"""
import json
import logging
import sys

from raven import Client

logging.basicConfig(level=logging.ERROR)
PER_PROJECT = 5
EMOJI = u'\U0001F600'


def padded(head, length, fill=u'x'):
    """`head` followed by `fill` up to `length` characters (not bytes)."""
    return head + fill * (length - len(head))


def long_server_name(tag, p):
    # 150 characters; the 4-byte character is the 128th, where a cut to 128 falls.
    name = padded(u'srv-%s-p%d-' % (tag, p), 127, u'n') + EMOJI
    return padded(name, 150, u'z')


def main():
    dsns = json.loads(open(sys.argv[1]).read())
    tag = sys.argv[2] if len(sys.argv) > 2 else 'a'
    sent = {}
    names_128 = []
    for p, dsn in enumerate(dsns):
        logger = 'rehearsal.bad.%s.p%d' % (tag, p)
        site = padded(u'site-%s-p%d-' % (tag, p), 300, u's')
        named = Client(dsn, name=long_server_name(tag, p), site=site)
        prefix = padded(u'http://example.com/%s/p%d/' % (tag, p), 220, u'u')
        for tail in [u'a', u'b', u'c']:
            named.captureMessage(u'rehearsal bad values %s p%d: long tags %s' % (tag, p, EMOJI),
                                 data={'logger': logger}, tags={'url': padded(prefix + tail, 260, tail)})
        # Its own server name too: the default (the host name) is a `server_name` tag value
        # every project shares, which the long-lived index (key, value) refuses twice.
        Client(dsn, name=u'srv-nul-%s-p%d' % (tag, p)).captureMessage(
            u'rehearsal bad values %s p%d: before\x00after' % (tag, p), data={'logger': logger})
        name_128 = padded(u'srv128-%s-p%d-' % (tag, p), 127, u'm') + EMOJI
        assert len(name_128) == 128 and len(name_128.encode('utf-8')) == 131
        names_128.append(name_128)
        Client(dsn, name=name_128).captureMessage(
            u'rehearsal bad values %s p%d: a 128-character server name %s' % (tag, p, EMOJI),
            data={'logger': logger})
        sent[dsn] = PER_PROJECT
    sys.stdout.write(json.dumps({'sent': sent, 'server_name_128': names_128}) + '\n')


if __name__ == '__main__':
    main()
