-- a state file written by portway with store schema 3 (sqlite3 iterdump)
PRAGMA user_version = 3;
BEGIN TRANSACTION;
CREATE TABLE containers (
        id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, hostname TEXT NOT NULL,
        command TEXT NOT NULL, netns TEXT NOT NULL, network_mode TEXT NOT NULL,
        status TEXT NOT NULL, pid INTEGER NOT NULL, pid_start INTEGER NOT NULL,
        exit_code INTEGER, auto_remove INTEGER NOT NULL, detach INTEGER NOT NULL,
        ports TEXT NOT NULL, dns TEXT NOT NULL,
        created TEXT NOT NULL, started TEXT NOT NULL, finished TEXT NOT NULL, runtime TEXT NOT NULL DEFAULT 'portway', cap_add TEXT NOT NULL DEFAULT '[]', cap_drop TEXT NOT NULL DEFAULT '[]', privileged INTEGER NOT NULL DEFAULT 0, user TEXT NOT NULL DEFAULT '');
INSERT INTO "containers" VALUES('c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1','web','web','["python3", "-m", "http.server", "80"]','/run/netns/pw-c1c1c1c1c1c1','bridge','exited',0,0,0,0,0,'[{"container_port": 80, "host_port": 8080, "protocol": "tcp", "host_ip": null}]','[]','2026-11-29T10:00:01.000000Z','','','portway','["NET_ADMIN"]','[]',0,'65534');
CREATE TABLE endpoints (
        id TEXT PRIMARY KEY,
        container_id TEXT NOT NULL REFERENCES containers(id),
        network_id TEXT NOT NULL REFERENCES networks(id),
        ifname TEXT NOT NULL, host_ifname TEXT NOT NULL UNIQUE,
        address TEXT NOT NULL, prefixlen INTEGER NOT NULL, mac TEXT NOT NULL,
        aliases TEXT NOT NULL,
        UNIQUE (network_id, address), UNIQUE (container_id, network_id),
        UNIQUE (container_id, ifname));
INSERT INTO "endpoints" VALUES('e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1','c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1','a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1','eth0','pwv-e1e1e1e1e1e','10.77.0.130',24,'02:42:0a:4d:00:82','["www"]');
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO "meta" VALUES('host_netns','pwt-migrate');
INSERT INTO "meta" VALUES('instance','5eed0003');
CREATE TABLE networks (
        id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, driver TEXT NOT NULL,
        subnet TEXT NOT NULL, gateway TEXT NOT NULL, ip_range TEXT, internal INTEGER NOT NULL,
        mtu INTEGER NOT NULL, options TEXT NOT NULL, labels TEXT NOT NULL,
        bridge TEXT NOT NULL UNIQUE, created TEXT NOT NULL);
INSERT INTO "networks" VALUES('a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1','app','bridge','10.77.0.0/24','10.77.0.1','10.77.0.128/25',0,1500,'{"com.docker.network.bridge.enable_icc": "false"}','{}','pwbr-a1a1a1a1a1','2026-11-29T10:00:00.000000Z');
COMMIT;
