"""labpipe's Celery side: the app configured from labpipe settings (:mod:`workers.app`), the thin
tasks (:mod:`workers.tasks`) and the embedded, server-less broker transport (:mod:`workers.embedded`)."""
