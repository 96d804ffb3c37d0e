# -*- coding: utf-8 -*-
"""Rehearsal only: configure Django exactly as bin/sentry does, then return to the caller."""
import sys


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
