"""Hooks for where Python apps run besides web servers: task-queue workers (``celery``, ``rq``)
and the uWSGI check (``uwsgi``). Each module imports its framework only when used."""
