"""The SCTP endpoints a published port's host-port check reads."""

from __future__ import annotations

from pathlib import Path

from portway.kernel import observe


def test_sctp_endpoints_from_proc(tmp_path: Path) -> None:
    """/proc/net/sctp/eps: each endpoint's local addresses with its port and inode; a
    kernel without SCTP has no such file, and nothing can listen."""
    eps = tmp_path / "eps"
    eps.write_text(
        " ENDPT     SOCK   STY SST HBKT LPORT   UID INODE LADDRS\n"
        "ffff8881 ffff8882 2   10  29   9132      0 4242 10.0.0.1 10.0.1.1\n"
        "ffff8883 ffff8884 1   10  30   36412     0 4343 ::\n")
    assert observe.sctp_listeners(str(eps)) == [
        ("10.0.0.1", 9132, 4242), ("10.0.1.1", 9132, 4242), ("::", 36412, 4343)]
    assert observe.sctp_listeners(str(tmp_path / "none")) == []
