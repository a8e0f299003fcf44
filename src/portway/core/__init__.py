"""portway's pure core: validation, IPAM, names, plans. No I/O of any kind."""
