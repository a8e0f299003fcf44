"""portway's DNS server (a process of its own) and its wire format."""
