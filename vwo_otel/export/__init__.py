"""The delivery path's last hop: VWO's wire format (``wire``), when to retry (``retry``),
one HTTP request (``http``) and the ``VWOExporter`` that ties them into ``Outcome`` values."""
