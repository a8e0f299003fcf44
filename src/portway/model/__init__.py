"""portway's data model: frozen dataclasses holding ipaddress objects, no I/O."""

from portway.model.types import (
    Container,
    Endpoint,
    IPAddress,
    IPNetwork,
    Network,
    PortMapping,
)

__all__ = ["Container", "Endpoint", "IPAddress", "IPNetwork", "Network", "PortMapping"]
