"""The portway CLI: a standard-library-only client of portwayd."""
