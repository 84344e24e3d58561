"""The daemon: the work behind each worker task (:mod:`~labpipe.daemon.jobs`) and the process
supervision of ``labpipe serve`` (:mod:`~labpipe.daemon.service`)."""
