"""portwayd: the engine's long-lived process, serving a JSON API on a unix socket."""
