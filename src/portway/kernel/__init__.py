"""The only modules that touch the kernel. Keep this file empty of imports:
the CLI imports portway.kernel.sandbox and must stay standard-library only."""
