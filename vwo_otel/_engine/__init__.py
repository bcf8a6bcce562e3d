"""The batching engine behind the processors: queue and timer (``batcher``), results to
``flush_callback`` and flush waits (``settle``), exit and fork (``lifecycle``), the on-disk
copy of the queue (``spool``). Internal: the processors are the public face."""
