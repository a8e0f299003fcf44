"""The SQLite store: WAL, BEGIN IMMEDIATE, UNIQUE constraints for names and addresses.

Addresses are reserved by a UNIQUE(network_id, address) constraint on
endpoints, so two allocations of one address cannot both commit.
"""

from __future__ import annotations

import ipaddress
import json
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from portway.errors import Conflict, PortwayError
from portway.model.types import (
    Container,
    Endpoint,
    EndpointConfig,
    IPAddress,
    IPInterface,
    Network,
    PortMapping,
    RunConfig,
    Subnet,
)

MIGRATIONS: list[str] = [
    # 1: the first schema
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE networks (
        id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, driver TEXT NOT NULL,
        subnet TEXT NOT NULL, gateway TEXT NOT NULL, ip_range TEXT, internal INTEGER NOT NULL,
        mtu INTEGER NOT NULL, options TEXT NOT NULL, labels TEXT NOT NULL,
        bridge TEXT NOT NULL UNIQUE, created TEXT NOT NULL);
    CREATE TABLE containers (
        id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, hostname TEXT NOT NULL,
        command TEXT NOT NULL, netns TEXT NOT NULL, network_mode TEXT NOT NULL,
        status TEXT NOT NULL, pid INTEGER NOT NULL, pid_start INTEGER NOT NULL,
        exit_code INTEGER, auto_remove INTEGER NOT NULL, detach INTEGER NOT NULL,
        ports TEXT NOT NULL, dns TEXT NOT NULL,
        created TEXT NOT NULL, started TEXT NOT NULL, finished TEXT NOT NULL);
    CREATE TABLE endpoints (
        id TEXT PRIMARY KEY,
        container_id TEXT NOT NULL REFERENCES containers(id),
        network_id TEXT NOT NULL REFERENCES networks(id),
        ifname TEXT NOT NULL, host_ifname TEXT NOT NULL UNIQUE,
        address TEXT NOT NULL, prefixlen INTEGER NOT NULL, mac TEXT NOT NULL,
        aliases TEXT NOT NULL,
        UNIQUE (network_id, address), UNIQUE (container_id, network_id),
        UNIQUE (container_id, ifname));
    """,
    # 2: containers whose namespace and processes another runtime owns (Podman)
    """
    ALTER TABLE containers ADD COLUMN runtime TEXT NOT NULL DEFAULT 'portway';
    """,
    # 3: what a container's processes may do (capabilities, --privileged, --user)
    """
    ALTER TABLE containers ADD COLUMN cap_add TEXT NOT NULL DEFAULT '[]';
    ALTER TABLE containers ADD COLUMN cap_drop TEXT NOT NULL DEFAULT '[]';
    ALTER TABLE containers ADD COLUMN privileged INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE containers ADD COLUMN user TEXT NOT NULL DEFAULT '';
    """,
    # 4: both address families: a network has subnets (any number, either family), an
    # endpoint an address per family, each reserved by UNIQUE(network_id, address). The
    # old single-address columns stay, holding the first of each (IPv4 where there is).
    """
    ALTER TABLE networks ADD COLUMN subnets TEXT NOT NULL DEFAULT '[]';
    UPDATE networks SET subnets = json_array(json_object(
        'subnet', subnet, 'gateway', gateway, 'ip_range', ip_range));
    CREATE TABLE addresses (
        endpoint_id TEXT NOT NULL REFERENCES endpoints(id) ON DELETE CASCADE,
        network_id TEXT NOT NULL, address TEXT NOT NULL, prefixlen INTEGER NOT NULL,
        UNIQUE (network_id, address));
    CREATE INDEX addresses_by_endpoint ON addresses(endpoint_id);
    INSERT INTO addresses SELECT id, network_id, address, prefixlen FROM endpoints;
    """,
    # 5: what `run` was asked for beyond networking (environment, working directory,
    # terminal, /etc extras, sysctls, labels, exposed ports, another's network), as
    # JSON: RunConfig's fields, those that differ from its defaults
    """
    ALTER TABLE containers ADD COLUMN config TEXT NOT NULL DEFAULT '{}';
    """,
    # 6: the default network is called bridge, as Docker's: the old default, portway, is
    # renamed (its bridge interface is named after its id, so nothing in the kernel
    # changes), unless a network bridge exists already or Podman made it.
    """
    UPDATE networks SET name = 'bridge' WHERE name = 'portway'
        AND labels NOT LIKE '%"io.podman.network"%'
        AND NOT EXISTS (SELECT 1 FROM networks WHERE name = 'bridge');
    """,
    # 7: endpoints keep the addresses asked for with --ip/--ip6 (inspect's IPAMConfig)
    """
    ALTER TABLE endpoints ADD COLUMN requested TEXT NOT NULL DEFAULT '[]';
    """,
    # 8: a container's life beyond its first run: its restart policy, what is known of its
    # end, whether its networking is up, and its configuration per network, kept while it
    # is stopped (the addresses it asked for reserved by UNIQUE(network_id, ip4|ip6)). A
    # container of an earlier version keeps its networks (their addresses were not asked
    # for, unless its endpoint recorded them: schema 7).
    """
    ALTER TABLE containers ADD COLUMN restart_policy TEXT NOT NULL DEFAULT 'no';
    ALTER TABLE containers ADD COLUMN restart_max INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE containers ADD COLUMN restart_count INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE containers ADD COLUMN user_stopped INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE containers ADD COLUMN error TEXT NOT NULL DEFAULT '';
    ALTER TABLE containers ADD COLUMN networked INTEGER NOT NULL DEFAULT 1;
    CREATE TABLE endpoint_configs (
        container_id TEXT NOT NULL REFERENCES containers(id) ON DELETE CASCADE,
        network_id TEXT NOT NULL, network_name TEXT NOT NULL, position INTEGER NOT NULL,
        aliases TEXT NOT NULL, ip4 TEXT, ip6 TEXT, mac TEXT,
        UNIQUE (container_id, network_id), UNIQUE (network_id, ip4),
        UNIQUE (network_id, ip6));
    CREATE INDEX endpoint_configs_by_network ON endpoint_configs(network_id);
    INSERT INTO endpoint_configs
        SELECT e.container_id, e.network_id, COALESCE(n.name, ''),
               CAST(substr(e.ifname, 4) AS INTEGER), e.aliases,
               (SELECT value FROM json_each(e.requested) WHERE value NOT LIKE '%:%'),
               (SELECT value FROM json_each(e.requested) WHERE value LIKE '%:%'), NULL
        FROM endpoints e JOIN containers c ON c.id = e.container_id
        LEFT JOIN networks n ON n.id = e.network_id
        WHERE c.runtime = 'portway';
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)
# endpoints.address of an endpoint without addresses (a network with ipam driver none)
NO_ADDRESS = "none:"


class StoreError(PortwayError):
    exit_code = 6


class SqliteStore:
    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.RLock()
        self._depth = 0
        # The last full list of containers and of endpoints, and the database's version
        # when each was read (_unchanged).
        self._kept: dict[str, tuple[tuple[int, int], list[Any]]] = {}
        self._kept_version = (0, 0)
        # Networks as parsed, by their whole row: a run reads its network three or four
        # times (resolve, IPAM, /etc files, attach), and parsing the subnets' JSON into
        # ipaddress objects cost more than the query. A row that changed is another key.
        self._parsed: dict[tuple[Any, ...], Network] = {}
        try:
            self._db = sqlite3.connect(path, timeout=30, isolation_level=None,
                                       check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"state file {path} is unreadable: {exc}",
                             "move it aside to start afresh (its networks and containers "
                             "will be forgotten)") from None

    def _migrate(self) -> None:
        if self._version() == SCHEMA_VERSION:
            return
        # Read again under the write lock: another process opening the same new file
        # at the same moment may have migrated it meanwhile.
        self._db.execute("BEGIN IMMEDIATE")
        try:
            version = self._version()
            for number in range(version, SCHEMA_VERSION):
                for statement in MIGRATIONS[number].split(";"):
                    if statement.strip():
                        self._db.execute(statement)
                self._db.execute(f"PRAGMA user_version = {number + 1}")
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def _version(self) -> int:
        version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"state file {self.path} has schema version {version}, newer than this "
                f"portway understands ({SCHEMA_VERSION})", "upgrade portway")
        return version

    @contextmanager
    def transaction(self) -> Iterator[None]:
        with self._lock:
            outer = self._depth == 0
            if outer:
                self._db.execute("BEGIN IMMEDIATE")
            self._depth += 1
            try:
                yield
            except BaseException:
                self._depth -= 1
                if outer:
                    self._db.execute("ROLLBACK")
                    self._kept.clear()  # (read inside it, and total_changes stays)
                raise
            self._depth -= 1
            if outer:
                self._db.execute("COMMIT")

    def _exec(self, sql: str, args: tuple[Any, ...] = ()) -> sqlite3.Cursor:
        with self._lock:
            try:
                return self._db.execute(sql, args)
            except sqlite3.IntegrityError as exc:
                raise Conflict(f"state conflict: {exc}", "try again") from None

    def _exec_many(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        with self._lock:
            try:
                self._db.executemany(sql, rows)
            except sqlite3.IntegrityError as exc:
                raise Conflict(f"state conflict: {exc}", "try again") from None

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # meta

    def get_meta(self, key: str) -> str | None:
        row = self._exec("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        self._exec("INSERT INTO meta(key, value) VALUES(?, ?) "
                   "ON CONFLICT(key) DO UPDATE SET value=excluded.value", (key, value))

    # networks

    def add_network(self, n: Network) -> None:
        subnets = [{"subnet": str(s.subnet), "gateway": str(s.gateway),
                    "ip_range": str(s.ip_range) if s.ip_range else None,
                    **({"aux": {k: str(v) for k, v in s.aux_addresses}}
                       if s.aux_addresses else {})} for s in n.subnets]
        self._exec(
            "INSERT INTO networks VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?)",
            # (The old single-subnet columns: empty for a network without subnets.)
            (n.id, n.name, n.driver, str(n.subnet) if n.subnets else "",
             str(n.gateway) if n.subnets else "",
             str(n.ip_range) if n.subnets and n.ip_range else None, int(n.internal), n.mtu,
             json.dumps(n.options), json.dumps(n.labels), n.bridge, n.created,
             json.dumps(subnets)))

    @staticmethod
    def _network(row: sqlite3.Row | tuple[Any, ...]) -> Network:
        subnets = tuple(Subnet(subnet=ipaddress.ip_network(s["subnet"]),
                               gateway=ipaddress.ip_address(s["gateway"]),
                               ip_range=ipaddress.ip_network(s["ip_range"])
                               if s.get("ip_range") else None,
                               aux_addresses=tuple((k, ipaddress.ip_address(v))
                                                   for k, v in s.get("aux", {}).items()))
                        for s in json.loads(row[12]))
        return Network(
            id=row[0], name=row[1], driver=row[2], subnets=subnets,
            internal=bool(row[6]), mtu=int(row[7]), options=json.loads(row[8]),
            labels=json.loads(row[9]), bridge=row[10], created=row[11])

    def _parsed_network(self, row: tuple[Any, ...]) -> Network:
        key = tuple(row)
        net = self._parsed.get(key)
        if net is None:
            if len(self._parsed) >= 1024:
                self._parsed.clear()
            net = self._parsed[key] = self._network(row)
        return net

    def _find(self, table: str, ref: str) -> tuple[Any, ...] | None:
        """A row by name, full id, or an unambiguous id prefix of 3+ hex digits."""
        row = self._exec(f"SELECT * FROM {table} WHERE name=? OR id=?", (ref, ref)).fetchone()
        if row is None and len(ref) >= 3 and all(c in "0123456789abcdef" for c in ref):
            rows = self._exec(f"SELECT * FROM {table} WHERE id LIKE ?", (ref + "%",)).fetchall()
            row = rows[0] if len(rows) == 1 else None
        return row  # type: ignore[no-any-return]

    def name_taken(self, table: str, name: str) -> bool:
        """Exactly this name (not an id prefix that happens to match it)."""
        assert table in ("networks", "containers")
        return self._exec(f"SELECT 1 FROM {table} WHERE name=?", (name,)).fetchone() is not None

    def find_network(self, ref: str) -> Network | None:
        row = self._find("networks", ref)
        return None if row is None else self._parsed_network(row)

    def networks(self) -> list[Network]:
        return [self._parsed_network(r) for r in
                self._exec("SELECT * FROM networks ORDER BY created, name").fetchall()]

    def set_network_options(self, network_id: str, options: dict[str, str]) -> None:
        self._exec("UPDATE networks SET options=? WHERE id=?", (json.dumps(options), network_id))

    def delete_network(self, network_id: str) -> None:
        self._exec("DELETE FROM networks WHERE id=?", (network_id,))

    # containers

    @staticmethod
    def _container_row(c: Container) -> tuple[Any, ...]:
        ports = [{"container_port": p.container_port, "host_port": p.host_port,
                  "protocol": p.protocol, "host_ip": str(p.host_ip) if p.host_ip else None}
                 for p in c.ports]
        return (c.id, c.name, c.hostname, json.dumps(list(c.command)), c.netns, c.network_mode,
                c.status, c.pid, c.pid_start, c.exit_code, int(c.auto_remove), int(c.detach),
                json.dumps(ports), json.dumps(list(c.dns)), c.created, c.started, c.finished,
                c.runtime, json.dumps(list(c.cap_add)), json.dumps(list(c.cap_drop)),
                int(c.privileged), c.user, _config_json(c.config), c.restart_policy,
                c.restart_max, c.restart_count, int(c.user_stopped), c.error,
                int(c.networked))

    @staticmethod
    def _container(row: tuple[Any, ...]) -> Container:
        ports = tuple(PortMapping(container_port=p["container_port"], host_port=p["host_port"],
                                  protocol=p["protocol"],
                                  host_ip=ipaddress.ip_address(p["host_ip"])
                                  if p["host_ip"] else None)
                      for p in json.loads(row[12]))
        return Container(
            id=row[0], name=row[1], hostname=row[2], command=tuple(json.loads(row[3])),
            netns=row[4], network_mode=row[5], status=row[6], pid=int(row[7]),
            pid_start=int(row[8]), exit_code=row[9], auto_remove=bool(row[10]),
            detach=bool(row[11]), ports=ports, dns=tuple(json.loads(row[13])),
            created=row[14], started=row[15], finished=row[16], runtime=row[17],
            cap_add=tuple(json.loads(row[18])), cap_drop=tuple(json.loads(row[19])),
            privileged=bool(row[20]), user=row[21], config=_config(row[22]),
            restart_policy=row[23], restart_max=int(row[24]), restart_count=int(row[25]),
            user_stopped=bool(row[26]), error=row[27], networked=bool(row[28]))

    def add_container(self, c: Container) -> None:
        row = self._container_row(c)
        self._exec(f"INSERT INTO containers VALUES({','.join('?' * len(row))})", row)

    def update_container(self, c: Container) -> None:
        row = self._container_row(c)
        self._exec("UPDATE containers SET name=?, hostname=?, command=?, netns=?, "
                   "network_mode=?, status=?, pid=?, pid_start=?, exit_code=?, auto_remove=?, "
                   "detach=?, ports=?, dns=?, created=?, started=?, finished=?, runtime=?, "
                   "cap_add=?, cap_drop=?, privileged=?, user=?, config=?, restart_policy=?, "
                   "restart_max=?, restart_count=?, user_stopped=?, error=?, networked=? "
                   "WHERE id=?",
                   (*row[1:], row[0]))

    def find_container(self, ref: str) -> Container | None:
        row = self._find("containers", ref)
        return None if row is None else self._container(row)

    def _unchanged(self, what: str) -> list[Any] | None:
        """The list last read for what, if no connection has changed the database since
        (this one's changes counted by total_changes, others' by PRAGMA data_version):
        trace and audit read every container and endpoint of a host with a thousand,
        each row parsed again, tens of milliseconds a look. Called under the lock."""
        version = (self._db.execute("PRAGMA data_version").fetchone()[0],
                   self._db.total_changes)
        kept = self._kept.get(what)
        if kept is not None and kept[0] == version:
            return list(kept[1])
        self._kept.pop(what, None)
        self._kept_version = version
        return None

    def _keep(self, what: str, rows: list[Any]) -> list[Any]:
        self._kept[what] = (self._kept_version, rows)
        return list(rows)

    def containers(self) -> list[Container]:
        with self._lock:
            kept = self._unchanged("containers")
            if kept is not None:
                return kept
            return self._keep("containers", [self._container(r) for r in self._exec(
                "SELECT * FROM containers ORDER BY created, name").fetchall()])

    def delete_container(self, container_id: str) -> None:
        self._exec("DELETE FROM endpoints WHERE container_id=?", (container_id,))
        self._exec("DELETE FROM endpoint_configs WHERE container_id=?", (container_id,))
        self._exec("DELETE FROM containers WHERE id=?", (container_id,))

    # endpoints

    def add_endpoint(self, e: Endpoint) -> None:
        with self.transaction():
            self._exec("INSERT INTO endpoints VALUES(?,?,?,?,?,?,?,?,?,?)",
                       (e.id, e.container_id, e.network_id, e.ifname, e.host_ifname,
                        # An endpoint without addresses: a placeholder unique per endpoint
                        # in the old column (UNIQUE per network), read back as none.
                        str(e.address) if e.addresses else f"{NO_ADDRESS}{e.id}",
                        e.prefixlen if e.addresses else 0, e.mac,
                        json.dumps(list(e.aliases)),
                        json.dumps([str(a) for a in e.requested])))
            if e.addresses:  # (one call for both families' rows)
                self._exec_many("INSERT INTO addresses VALUES(?,?,?,?)",
                                [(e.id, e.network_id, str(a.ip), a.network.prefixlen)
                                 for a in e.addresses])

    @staticmethod
    def _endpoint(row: tuple[Any, ...]) -> Endpoint:
        # row[10]: the endpoint's addresses, "ADDRESS/PREFIX ..." (IPv4 first).
        addresses: tuple[IPInterface, ...] = tuple(sorted(
            (ipaddress.ip_interface(a) for a in (
                row[10] or ("" if row[5].startswith(NO_ADDRESS) else f"{row[5]}/{row[6]}")
            ).split()),
            key=lambda a: a.version))
        return Endpoint(id=row[0], container_id=row[1], network_id=row[2], ifname=row[3],
                        host_ifname=row[4], addresses=addresses, mac=row[7],
                        aliases=tuple(json.loads(row[8])),
                        requested=tuple(ipaddress.ip_address(a) for a in json.loads(row[9])))

    def endpoints(self, container_id: str | None = None,
                  network_id: str | None = None) -> list[Endpoint]:
        sql = ("SELECT *, (SELECT group_concat(address || '/' || prefixlen, ' ') FROM "
               "addresses WHERE endpoint_id = endpoints.id) FROM endpoints WHERE 1=1")
        args: list[str] = []
        if container_id is not None:
            sql += " AND container_id=?"
            args.append(container_id)
        if network_id is not None:
            sql += " AND network_id=?"
            args.append(network_id)
        sql += " ORDER BY container_id, ifname"
        if args:
            return [self._endpoint(r) for r in self._exec(sql, tuple(args)).fetchall()]
        with self._lock:
            kept = self._unchanged("endpoints")
            if kept is not None:
                return kept
            return self._keep("endpoints", [self._endpoint(r) for r in
                                            self._exec(sql).fetchall()])

    def delete_endpoint(self, endpoint_id: str) -> None:
        self._exec("DELETE FROM endpoints WHERE id=?", (endpoint_id,))

    def address_in_use(self, network_id: str, address: IPAddress) -> bool:
        """Held by an endpoint, or reserved by a container that asked for it."""
        text = str(address)
        column = "ip4" if address.version == 4 else "ip6"
        return self._exec(
            "SELECT 1 FROM addresses WHERE network_id=? AND address=? UNION ALL "
            f"SELECT 1 FROM endpoint_configs WHERE network_id=? AND {column}=? LIMIT 1",
            (network_id, text, network_id, text)).fetchone() is not None

    def address_holder(self, network_id: str, address: IPAddress,
                       owner: str = "") -> str | None:
        """The id of the container that holds the address (its endpoint has it) or
        reserves it (asked for it), not counting owner's reservation; None if free."""
        text = str(address)
        column = "ip4" if address.version == 4 else "ip6"
        row = self._exec(
            "SELECT e.container_id FROM addresses a JOIN endpoints e ON e.id = a.endpoint_id "
            "WHERE a.network_id=? AND a.address=? UNION ALL "
            f"SELECT container_id FROM endpoint_configs WHERE network_id=? AND {column}=? "
            "AND container_id != ? LIMIT 1",
            (network_id, text, network_id, text, owner)).fetchone()
        return None if row is None else str(row[0])

    # a container's configuration per network

    def add_config(self, cfg: EndpointConfig) -> None:
        self._exec("INSERT INTO endpoint_configs VALUES(?,?,?,?,?,?,?,?)",
                   (cfg.container_id, cfg.network_id, cfg.network_name, cfg.position,
                    json.dumps(list(cfg.aliases)),
                    str(cfg.ipv4) if cfg.ipv4 else None, str(cfg.ipv6) if cfg.ipv6 else None,
                    cfg.mac))

    def configs(self, container_id: str | None = None,
                network_id: str | None = None) -> list[EndpointConfig]:
        """In each container's order of networks."""
        sql = "SELECT * FROM endpoint_configs WHERE 1=1"
        args: list[str] = []
        if container_id is not None:
            sql += " AND container_id=?"
            args.append(container_id)
        if network_id is not None:
            sql += " AND network_id=?"
            args.append(network_id)
        sql += " ORDER BY container_id, position"
        return [EndpointConfig(
            container_id=r[0], network_id=r[1], network_name=r[2], position=int(r[3]),
            aliases=tuple(json.loads(r[4])),
            ipv4=ipaddress.IPv4Address(r[5]) if r[5] else None,
            ipv6=ipaddress.IPv6Address(r[6]) if r[6] else None, mac=r[7])
            for r in self._exec(sql, tuple(args)).fetchall()]

    def delete_config(self, container_id: str, network_id: str) -> None:
        self._exec("DELETE FROM endpoint_configs WHERE container_id=? AND network_id=?",
                   (container_id, network_id))

    def container_names(self) -> set[str]:
        return {r[0] for r in self._exec("SELECT name FROM containers").fetchall()}


def _config_json(config: RunConfig) -> str:
    """RunConfig as JSON: the fields that differ from the defaults (pairs as lists)."""
    default = RunConfig()
    return json.dumps({name: value for name in RunConfig.__dataclass_fields__
                       if (value := getattr(config, name)) != getattr(default, name)})


def _config(text: str) -> RunConfig:
    data = json.loads(text or "{}")
    pairs = ("labels", "extra_hosts", "sysctls", "expose")
    lists = ("env", "dns_search", "dns_options")
    for name in pairs:
        if name in data:
            data[name] = tuple(tuple(item) for item in data[name])
    for name in lists:
        if data.get(name) is not None:
            data[name] = tuple(data[name])
    known = {k: v for k, v in data.items() if k in RunConfig.__dataclass_fields__}
    return RunConfig(**known)
