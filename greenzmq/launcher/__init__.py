"""The gunicorn-style launcher: settings, app specs, the master and the worker process.

``config`` (settings), ``appspec`` (``module:app``), ``runner`` (the command),
``arbiter`` (the master), ``workerproc`` (the worker), ``protocol`` (what the
two say over their socketpair, and the exit codes), ``proc`` (pidfile and
process titles). Every module here but ``workerproc`` (the worker, which runs
the app) imports no zmq and no gevent: the master forks (rule 7).
"""
