"""run's flags through the engine, on fakes of the store and the kernel: what a container
is given (environment, directory, files, sysctls, ports, MACs), another container's
namespace shared and never torn down with the guest, and the network options."""

from __future__ import annotations

from pathlib import Path

import pytest
from fakes import container_named, fake_host, rows

from portway.errors import Conflict, InvalidInput, PortwayError
from portway.store.sqlite import SqliteStore


def test_what_a_detached_command_is_given(tmp_path: Path) -> None:
    h, w = fake_host(str(tmp_path))
    h.networks.create("app", subnet="10.77.0.0/24")
    h.containers.run(["sleep", "1"], name="web", networks=["app"], detach=True,
                     env=["A=1", "PATH=/opt/bin", "A=2"], workdir=str(tmp_path), tty=True,
                     interactive=True, domainname="example.com", labels=["tier=web"],
                     add_hosts=["db:10.0.0.9", "gw:host-gateway"],
                     dns_search=["corp.example"], dns_options=["ndots:2"])
    (spawn,) = w.spawned
    assert spawn["workdir"] == str(tmp_path) and spawn["domainname"] == "example.com"
    assert spawn["env"]["A"] == "2" and spawn["env"]["PATH"] == "/opt/bin"
    assert spawn["env"]["TERM"] == "xterm" and spawn["env"]["HOSTNAME"] == spawn["hostname"]
    assert spawn["stdin"] is not None and Path(spawn["stdin"]).is_fifo()  # -d -i
    c = container_named(h, "web")
    etc = w.etc[c.netns]
    assert "10.0.0.9\tdb\n10.77.0.1\tgw\n" in etc["hosts"]
    assert f"10.77.0.2\t{c.hostname}.example.com {c.hostname} web" in etc["hosts"]
    assert "search corp.example\noptions ndots:2\n" in etc["resolv.conf"]
    assert dict(c.config.labels) == {"tier": "web"}


def test_the_config_survives_the_store(tmp_path: Path) -> None:
    h, _ = fake_host(str(tmp_path))
    h.networks.create("app", subnet="10.77.0.0/24")
    h.containers.run(["sleep", "1"], name="web", networks=["app"], env=["A=1"],
                     labels=["a=b"], sysctls=["net.ipv4.ip_unprivileged_port_start=0"],
                     expose=["80", "53/udp"], dns_search=["."], workdir="/tmp")
    c = container_named(h, "web")
    store = SqliteStore(str(tmp_path / "db"))
    try:
        store.add_container(c)
        again = store.find_container("web")
        assert again is not None and again.config == c.config
        assert again.config.dns_search == () and again.config.dns_options is None
    finally:
        store.close()


def test_bad_flags_change_nothing(tmp_path: Path) -> None:
    h, w = fake_host(str(tmp_path))
    h.networks.create("app", subnet="10.77.0.0/24")
    w.log.clear()
    cases = [({"workdir": "relative"}, "absolute path"),
             ({"workdir": str(tmp_path / "missing")}, "does not exist"),
             ({"sysctls": ["kernel.shmmax=1"]}, "separate kernel namespace"),
             ({"networks": ["host"], "sysctls": ["net.core.somaxconn=1"]}, "--network host"),
             ({"networks": ["none"], "add_hosts": ["gw:host-gateway"]}, "host-gateway"),
             ({"ip": "172.17.0.9"}, "needs a user network"),
             ({"networks": ["host"], "publish_all": True, "expose": ["80"]},
              "cannot publish"),
             ({"mac": "01:00:5e:00:00:01"}, "multicast")]
    for kwargs, message in cases:
        with pytest.raises(InvalidInput, match=message):
            h.containers.run(["sleep", "1"], **kwargs)  # type: ignore[arg-type]
    assert w.log == [] and rows(h) == (1, 0, 0)


def test_publish_all_and_host_port_ranges(tmp_path: Path) -> None:
    h, w = fake_host(str(tmp_path))
    h.networks.create("app", subnet="10.77.0.0/24")
    w.held.add(("tcp", "", 8000))  # taken: the range goes on to the next
    h.containers.run(["sleep", "1"], name="web", networks=["app"], ports=["8080:80",
                     "8000-8010:81"], expose=["80", "443", "53/udp"], publish_all=True)
    c = container_named(h, "web")
    got = sorted((p.container_port, p.protocol, p.host_port) for p in c.ports)
    assert got[:2] == [(53, "udp", 32768), (80, "tcp", 8080)]
    assert got[2] == (81, "tcp", 8001) and got[3][:2] == (443, "tcp")
    assert 32768 <= got[3][2] <= 32800
    assert h.publishing.describe("web", "81") == ["0.0.0.0:8001"]
    with pytest.raises(PortwayError, match="no public port '82/tcp' published for web") as e:
        h.publishing.describe("web", "82")
    assert e.value.exit_code == 1
    for port in range(8002, 8011):
        w.held.add(("tcp", "", port))
    with pytest.raises(Conflict, match="8000-8010/tcp are all taken"):
        h.containers.run(["sleep", "1"], networks=["app"], ports=["8000-8010:80"])


def test_mac_addresses_and_the_long_form(tmp_path: Path) -> None:
    h, _ = fake_host(str(tmp_path))
    h.networks.create("app", subnet="10.77.0.0/24")
    h.networks.create("db", subnet="10.78.0.0/24")
    h.containers.run(["sleep", "1"], name="web", mac="02:42:AC:11:00:09",
                     networks=["app", "name=db,alias=store,ip=10.78.0.50,"
                               "mac-address=02:00:00:00:00:50"])
    eps = {e.ifname: e for e in h.store.endpoints()}
    assert eps["eth0"].mac == "02:42:ac:11:00:09" and eps["eth0"].aliases == ()
    assert (eps["eth1"].mac, eps["eth1"].aliases, str(eps["eth1"].address)) == \
        ("02:00:00:00:00:50", ("store",), "10.78.0.50")
    with pytest.raises(Conflict, match="already in use on network app by web"):
        h.containers.run(["sleep", "1"], networks=["app"], mac="02:42:ac:11:00:09")
    assert rows(h) == (2, 1, 2)


def test_another_containers_namespace(tmp_path: Path) -> None:
    h, w = fake_host(str(tmp_path))
    h.networks.create("app", subnet="10.77.0.0/24")
    h.containers.run(["sleep", "1"], name="web", networks=["app"], detach=True,
                     domainname="example.com")
    web = container_named(h, "web")
    for kwargs, message in [({"hostname": "x"}, "hostname and the network mode"),
                            ({"dns": ["1.1.1.1"]}, "dns and the network mode"),
                            ({"add_hosts": ["a:1.2.3.4"]}, "host-to-IP mapping"),
                            ({"ports": ["80"]}, "port publishing"),
                            ({"expose": ["80"]}, "port exposing")]:
        with pytest.raises(InvalidInput, match=message):
            h.containers.run(["sleep", "1"], networks=["container:web"],
                             **kwargs)  # type: ignore[arg-type]
    w.log.clear()
    info = h.containers.run(["sleep", "1"], name="side", networks=["container:web"],
                            detach=True, sysctls=["net.core.somaxconn=512"])
    side = container_named(h, "side")
    assert side.netns == web.netns and side.config.network_of == web.id
    assert side.hostname == web.hostname and info["Domainname"] == "example.com"
    assert info["Binds"] == h.sandboxes.binds(web)  # the other's /etc files
    assert "netns.create" not in w.log and w.sysctls[(web.netns, "net.core.somaxconn")] == "512"
    assert h.store.endpoints(container_id=side.id) == []
    # Removing the guest leaves the other's namespace alone ...
    h.containers.rm(["side"], force=True)
    assert web.netns in w.namespaces and web.pid in w.processes
    # ... and removing the other spares a guest's processes, as Docker does.
    h.containers.run(["sleep", "1"], name="side", networks=["container:web"], detach=True)
    side = container_named(h, "side")
    h.containers.rm(["web"], force=True)
    assert side.pid in w.processes and web.netns not in w.namespaces
    h.containers.rm(["side"], force=True)
    # Only a running container's namespace can be joined.
    h.containers.run(["sleep", "1"], name="stopped", networks=["app"])
    with pytest.raises(Conflict, match="non running container: stopped"):
        h.containers.run(["sleep", "1"], networks=["container:stopped"])


def test_network_options(tmp_path: Path) -> None:
    h, w = fake_host(str(tmp_path))
    net = h.networks.create("lab", subnet="10.5.0.0/24", aux_addresses=["router=10.5.0.2"],
                            options=["com.docker.network.bridge.name=br-lab"])
    assert net.bridge == "br-lab" and "br-lab" in w.bridges
    h.containers.run(["sleep", "1"], name="a", networks=["lab"])
    assert str(h.store.endpoints()[0].address) == "10.5.0.3"  # the aux address skipped
    with pytest.raises(Conflict, match="auxiliary address router"):
        h.containers.run(["sleep", "1"], networks=["lab"], ip="10.5.0.2")
    for bridge, message in (("br-lab", "taken by network lab"), ("eth0", "the host has")):
        with pytest.raises(Conflict, match=message):
            h.networks.create("x", options=[f"com.docker.network.bridge.name={bridge}"])
    assert rows(h) == (1, 1, 1)
