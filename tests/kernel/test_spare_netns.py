"""kernel/netns.py's spare namespaces (made ahead, named when a container claims one) and
the sandbox kernel that keeps one ready: a claimed spare is a named namespace like one
create_netns makes; an unclaimed one leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess

import pytest

from portway.engine.sandboxes import LiveSandboxKernel
from portway.kernel import links, netns
from portway.testbed import claim, release


@pytest.fixture
def name() -> str:
    if os.geteuid() != 0:
        pytest.skip("kernel tests need root")
    # pwk-: a test's own; claimed, so a killed run's is reaped.
    return f"pwk-s-{secrets.token_hex(3)}"


def lo(ns: str) -> dict[str, object]:
    out = subprocess.run(["ip", "-n", ns, "-j", "link", "show", "lo"], capture_output=True,
                         text=True, check=True).stdout
    link: dict[str, object] = json.loads(out)[0]
    return link


def test_a_claimed_spare_is_a_named_namespace_with_lo_up_and_tagged(name: str) -> None:
    claim(name)
    try:
        spare = netns.make_spare()
        ipr = netns.claim_spare(spare, name, lambda i: links.setup_loopback(i, "pw:t:c:1"))
        try:
            assert netns.netns_exists(name)
            link = lo(name)
            assert "UP" in link["flags"] and link["ifalias"] == "pw:t:c:1"  # type: ignore[operator]
            # The socket handed back is inside it.
            assert links.index_of(ipr, "lo") == 1
            assert {x.ifname for x in links.observe_links(ipr)} == {"lo"}
        finally:
            ipr.close()
    finally:
        netns.delete_netns(name)
        release(name)
    assert not os.path.exists(netns.netns_path(name))


def test_a_claim_that_fails_takes_its_name_back_and_leaves_no_spare(name: str) -> None:
    claim(name)
    try:
        spare = netns.make_spare()

        def fails(_: object) -> None:
            raise OSError("no")

        with pytest.raises(OSError, match="no"):
            netns.claim_spare(spare, name, fails)
        assert not os.path.exists(netns.netns_path(name))
        assert spare.fd == -1  # closed: nothing holds it any more
    finally:
        release(name)


def test_the_sandbox_kernel_keeps_spares_ready_and_closes_them(name: str) -> None:
    kernel = LiveSandboxKernel()
    names = [f"{name}-{i}" for i in range(3)]
    for n in names:
        claim(n)
    try:
        for n in names:  # the first made at once, the others from spares
            box = kernel.create(netns.netns_path(n), f"pw:t:c:{n}")
            kernel.prepare()
            kernel.prepare()  # one at a time: asked again, nothing more is made
            with kernel._making:  # made by now
                assert kernel._spares
            try:
                assert lo(n)["ifalias"] == f"pw:t:c:{n}"
                assert links.index_of(box.ipr, "lo") == 1  # type: ignore[arg-type]
            finally:
                box.close()
        inodes = {os.stat(netns.netns_path(n)).st_ino for n in names}
        assert len(inodes) == 3  # three namespaces, not one named thrice
        kernel.close()
        assert kernel._spares == [] and not kernel._making.locked()
        assert not set(os.listdir(netns.RUN_NETNS)) & {f"{name}-{i}" for i in range(3, 9)}
    finally:
        for n in names:
            netns.delete_netns(n)
            release(n)


def test_spares_are_made_for_ids_of_their_own_and_tagged_ahead(
        name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """run takes the next ready spare's id: its claim is a mount, lo tagged ahead for it.
    Two are kept, so a container made right after another does not wait for one. An id
    asked of no spare, or a create for another tag, still gets lo up and tagged."""
    kernel = LiveSandboxKernel(lambda cid: f"pw:t:container:{cid}")
    tagged: list[str] = []
    real = links.setup_loopback

    def setup_loopback(ipr: links.IPRoute, tag: str) -> None:
        tagged.append(tag)
        real(ipr, tag)

    monkeypatch.setattr(links, "setup_loopback", setup_loopback)
    names = [f"{name}-{i}" for i in range(4)]
    for n in names:
        claim(n)
    try:
        kernel.prepare()
        with kernel._making:  # made by now
            assert len(kernel._spares) == LiveSandboxKernel.SPARES == 2
        ahead = [cid for _, cid in kernel._spares]
        assert tagged == [f"pw:t:container:{cid}" for cid in ahead]  # tagged when made
        # An id is handed out once: a run that fails before it claims the spare may have
        # recorded its container (a command that cannot be run), so the next one must
        # not be given that id again.
        assert kernel.next_id() == ahead[0]
        again = kernel.next_id()
        assert again != ahead[0] and again != ahead[1]
        for n, cid in zip(names, ahead, strict=False):
            box = kernel.create(netns.netns_path(n), f"pw:t:container:{cid}")
            box.close()
            assert lo(n)["ifalias"] == f"pw:t:container:{cid}"
            assert "UP" in lo(n)["flags"]  # type: ignore[operator]
        assert len(tagged) == 2  # the claims sent nothing more
        # No spare ready: a fresh id, and create makes the namespace and tags it.
        other = kernel.next_id()
        assert other not in ahead
        box = kernel.create(netns.netns_path(names[2]), f"pw:t:container:{other}")
        box.close()
        assert lo(names[2])["ifalias"] == f"pw:t:container:{other}"
        # A spare claimed for another container (gc re-making one): tagged for it.
        kernel.prepare()
        box = kernel.create(netns.netns_path(names[3]), "pw:t:container:elsewhere")
        box.close()
        assert lo(names[3])["ifalias"] == "pw:t:container:elsewhere"
        kernel.close()
        assert kernel._spares == [] and not kernel._making.locked()
    finally:
        for n in names:
            netns.delete_netns(n)
            release(n)


def threads() -> int:
    return len(os.listdir("/proc/self/task"))


def test_spares_are_made_by_one_thread_that_ends_with_close(name: str) -> None:
    """prepare wakes one maker thread kept for the kernel's life (a set-up starts no
    thread for the next spares), and close ends it."""
    import time

    kernel = LiveSandboxKernel()
    names = [f"{name}-{i}" for i in range(3)]
    for n in names:
        claim(n)
    before = threads()
    try:
        for n in names:  # take one, make it again: three times
            kernel.prepare()
            with kernel._making:
                assert len(kernel._spares) == LiveSandboxKernel.SPARES
            time.sleep(0.05)  # (a thread that ends once its spares are made is gone)
            assert threads() == before + 1
            kernel.create(netns.netns_path(n), "pw:t:c:1").close()
        kernel.close()
        assert kernel._spares == [] and not kernel._making.locked()
        deadline = time.monotonic() + 5
        while threads() > before and time.monotonic() < deadline:
            time.sleep(0.01)
        assert threads() == before
        kernel.prepare()  # closed: nothing more is made, no thread started
        assert kernel._spares == [] and threads() == before
    finally:
        for n in names:
            netns.delete_netns(n)
            release(n)
