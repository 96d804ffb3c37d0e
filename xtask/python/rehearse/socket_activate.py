"""Rehearsal and tests only: what systemd does for a socket-activated service.

    python3 socket_activate.py PROGRAM ARGS...
The listening socket is already fd 3 (the caller put it there); this sets LISTEN_FDS=1 and
LISTEN_PID to this process, then execs PROGRAM, which keeps the pid: the protocol of
sd_listen_fds(3), which hold-events and Sentry 6's gunicorn (0.17.4) both follow.
"""
import os
import sys

os.environ['LISTEN_FDS'] = '1'
os.environ['LISTEN_PID'] = str(os.getpid())
os.execvp(sys.argv[1], sys.argv[1:])
