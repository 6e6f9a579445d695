"""The gunicorn-style launcher: settings, app specs, the master and the worker process.

Every module here but ``workerproc`` (the worker, which runs the app) imports no zmq
and no gevent: the master forks (rule 7).
"""
