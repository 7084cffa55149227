"""Client hosts: the host, its trainer, its spec and simulated behaviours."""
