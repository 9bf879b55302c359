#!/usr/bin/python3
"""First-boot configuration of the bramble Raspberry Pi image.

The image's boot partition (FAT, editable on any laptop after flashing) holds
`bramble-firstboot.toml`. At boot, before the network, ssh and bramble start,
`bramble-firstboot.service` runs `firstboot apply`, which

  * sets the hostname, the time zone, the Wi-Fi country, network and password,
  * creates the user with the SSH public keys (no password unless a hash is given),
  * writes bramble's API credentials into its state directory,
  * queues the functions to deploy (with their image archives on the card),
  * removes the secrets from the boot partition: the file is renamed to
    `bramble-firstboot.applied.toml` with every `password`/`password_hash` line replaced by a
    comment (the original's bytes are overwritten before it is deleted), and a report without
    secrets is written to `bramble-firstboot.log` beside it.

After bramble has started, `bramble-firstboot-functions.service` runs `firstboot deploy`:
`bramble image import` of each archive, then `bramble deploy`.

A file with a mistake changes nothing: the whole file is checked first, the error goes to the
console and to `bramble-firstboot.log`, and the file stays for the next boot. Check a file on
a laptop (Python 3.11 or later) before the first boot:

    python3 bramble_firstboot.py check /media/you/PIBOOT/bramble-firstboot.toml

Standard library only (tomllib: Python 3.11, Debian bookworm).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python < 3.11
    tomllib = None

FILE_NAME = "bramble-firstboot.toml"
APPLIED_NAME = "bramble-firstboot.applied.toml"
LOG_NAME = "bramble-firstboot.log"
BOOT_DIR = "/boot/firmware"
PENDING = "var/lib/bramble-image/firstboot-functions.json"
SECRET_KEYS = ("password", "password_hash", "join")

HOSTNAME_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
FUNCTION_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
TIMEZONE_RE = re.compile(r"^[A-Za-z0-9_+-]+(/[A-Za-z0-9_+-]+)*$")
# A join command as `bramble cluster init` prints it: `bramble1.CLUSTER.PAYLOAD HOST:PORT`.
JOIN_RE = re.compile(r"^bramble1\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.[A-Za-z0-9_-]+ [^\s]+$")
LABEL_RE = re.compile(r"^[A-Za-z0-9._/-]+=[A-Za-z0-9._-]*$")
QUANTITY_RE = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi)?$")
SSH_KEY_TYPES = (
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
)
# Names the first-boot user may not take (system accounts of the image).
RESERVED_USERS = {
    "root", "daemon", "bin", "sys", "sync", "games", "man", "lp", "mail", "news", "uucp",
    "proxy", "www-data", "backup", "list", "irc", "_apt", "nobody", "messagebus", "sshd",
    "avahi", "systemd-network", "systemd-resolve", "systemd-timesync", "bramble",
}
# Groups the user joins when the image has them.
USER_GROUPS = ("sudo", "adm", "systemd-journal", "netdev", "dialout", "gpio", "i2c", "spi")


class ConfigError(Exception):
    """A mistake in the first-boot file: nothing is applied."""


@dataclass
class User:
    name: str
    ssh_authorized_keys: list[str] = field(default_factory=list)
    password_hash: str | None = None
    sudo: bool = True


@dataclass
class Wifi:
    country: str
    ssid: str
    password: str | None = None
    hidden: bool = False


@dataclass
class Credentials:
    user: str
    password: str


@dataclass
class Function:
    name: str
    image: str
    archive: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    memory: str | None = None
    cpu: str | None = None


@dataclass
class Cluster:
    join: str
    board: str | None = None
    labels: list[str] = field(default_factory=list)


@dataclass
class Config:
    hostname: str | None = None
    timezone: str | None = None
    user: User | None = None
    wifi: Wifi | None = None
    bramble: Credentials | None = None
    cluster: Cluster | None = None
    functions: list[Function] = field(default_factory=list)

    def secrets(self) -> list[str]:
        """The secret values this file holds (to prove they are gone after scrubbing)."""
        out = []
        if self.wifi and self.wifi.password:
            out.append(self.wifi.password)
        if self.bramble:
            out.append(self.bramble.password)
        if self.cluster:
            out.append(self.cluster.join.split()[0])
        if self.user and self.user.password_hash:
            out.append(self.user.password_hash)
        return out


# --------------------------------------------------------------------------------------------
# Parsing and validation


def _table(data: dict, key: str, where: str) -> dict | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ConfigError(f"{where}{key}: expected a table [{key}]")
    return value


def _str(data: dict, key: str, where: str, required: bool = False) -> str | None:
    value = data.get(key)
    if value is None:
        if required:
            raise ConfigError(f"{where}{key}: missing (required)")
        return None
    if not isinstance(value, str):
        raise ConfigError(f"{where}{key}: expected a string in quotes, got {type(value).__name__}")
    return value


def _bool(data: dict, key: str, where: str, default: bool) -> bool:
    value = data.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(f"{where}{key}: expected true or false")
    return value


def _str_map(data: dict, key: str, where: str) -> dict[str, str]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{where}{key}: expected a table, e.g. {key} = {{ KEY = \"value\" }}")
    out = {}
    for k, v in value.items():
        if isinstance(v, bool) or not isinstance(v, (str, int, float)):
            raise ConfigError(f"{where}{key}.{k}: expected a string")
        out[k] = v if isinstance(v, str) else str(v)
    return out


def _unknown(data: dict, known: set[str], where: str) -> None:
    extra = sorted(set(data) - known)
    if extra:
        raise ConfigError(
            f"{where or 'top level'}: unknown key(s) {', '.join(extra)} "
            f"(known: {', '.join(sorted(known))})"
        )


def parse(text: str) -> Config:
    """Parses and validates a first-boot file. Raises ConfigError on any mistake."""
    if tomllib is None:  # pragma: no cover
        raise ConfigError("Python 3.11 or later is needed (tomllib)")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"not valid TOML: {e}") from None
    _unknown(data, {"hostname", "timezone", "user", "wifi", "bramble", "cluster", "function"}, "")
    config = Config()

    hostname = _str(data, "hostname", "")
    if hostname is not None:
        if not HOSTNAME_RE.match(hostname):
            raise ConfigError(
                f"hostname {hostname!r}: letters, digits and '-' only (not first or last), "
                "at most 63 characters; the board is then <hostname>.local on the LAN"
            )
        config.hostname = hostname.lower()

    timezone = _str(data, "timezone", "")
    if timezone is not None:
        if not TIMEZONE_RE.match(timezone) or ".." in timezone:
            raise ConfigError(f"timezone {timezone!r}: expected a name like Europe/Berlin or UTC")
        config.timezone = timezone

    user = _table(data, "user", "")
    if user is not None:
        _unknown(user, {"name", "ssh_authorized_keys", "password_hash", "sudo"}, "[user] ")
        name = _str(user, "name", "[user] ", required=True)
        if not USER_RE.match(name):
            raise ConfigError(
                f"[user] name {name!r}: lower-case letters, digits, '_' and '-', starting with a letter"
            )
        if name in RESERVED_USERS:
            raise ConfigError(f"[user] name {name!r} is a system account: choose another name")
        keys = user.get("ssh_authorized_keys", [])
        if isinstance(keys, str):
            keys = [keys]
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise ConfigError("[user] ssh_authorized_keys: expected a list of strings")
        keys = [k.strip() for k in keys if k.strip()]
        for key in keys:
            parts = key.split()
            if len(parts) < 2 or parts[0] not in SSH_KEY_TYPES or "\n" in key:
                raise ConfigError(
                    f"[user] ssh_authorized_keys: {key[:40]!r}... is not an SSH public key "
                    "(one line such as 'ssh-ed25519 AAAA... you@laptop', the content of ~/.ssh/id_ed25519.pub)"
                )
        password_hash = _str(user, "password_hash", "[user] ")
        if password_hash is not None and not re.match(r"^\$(y|gy|7|2[abxy]|6|5)\$\S+$", password_hash):
            raise ConfigError(
                "[user] password_hash: expected a crypt hash such as the output of "
                "`openssl passwd -6` or `mkpasswd` ($6$... or $y$...), never the password itself"
            )
        if not keys and password_hash is None:
            raise ConfigError(
                f"[user] {name}: give ssh_authorized_keys (or a password_hash): the image has no default password"
            )
        config.user = User(name, keys, password_hash, _bool(user, "sudo", "[user] ", True))

    wifi = _table(data, "wifi", "")
    if wifi is not None:
        _unknown(wifi, {"country", "ssid", "password", "hidden"}, "[wifi] ")
        country = _str(wifi, "country", "[wifi] ", required=True)
        if not re.match(r"^[A-Za-z]{2}$", country):
            raise ConfigError(f"[wifi] country {country!r}: a two-letter ISO 3166 code, e.g. DE, GB, US")
        ssid = _str(wifi, "ssid", "[wifi] ", required=True)
        if not 1 <= len(ssid.encode()) <= 32:
            raise ConfigError("[wifi] ssid: 1 to 32 bytes")
        password = _str(wifi, "password", "[wifi] ")
        if password is not None:
            hex64 = re.match(r"^[0-9a-fA-F]{64}$", password)
            if not hex64 and not (8 <= len(password) <= 63 and password.isascii() and password.isprintable()):
                raise ConfigError(
                    "[wifi] password: 8 to 63 printable ASCII characters (WPA2), or the 64 hex digits of a PSK; "
                    "leave it out for an open network"
                )
        config.wifi = Wifi(country.upper(), ssid, password, _bool(wifi, "hidden", "[wifi] ", False))

    bramble = _table(data, "bramble", "")
    if bramble is not None:
        _unknown(bramble, {"user", "password"}, "[bramble] ")
        api_user = _str(bramble, "user", "[bramble] ") or "admin"
        if not re.match(r"^[A-Za-z0-9._-]{1,64}$", api_user):
            raise ConfigError("[bramble] user: letters, digits, '.', '_' and '-' only")
        password = _str(bramble, "password", "[bramble] ", required=True)
        if len(password) < 8 or any(c in password for c in "\r\n") or password != password.strip():
            raise ConfigError("[bramble] password: at least 8 characters, one line, no leading or trailing space")
        config.bramble = Credentials(api_user, password)

    cluster = _table(data, "cluster", "")
    if cluster is not None:
        _unknown(cluster, {"join", "board", "labels"}, "[cluster] ")
        join = " ".join((_str(cluster, "join", "[cluster] ", required=True) or "").split())
        if not JOIN_RE.match(join):
            raise ConfigError("[cluster] join: \"TOKEN ADDRESS\" as `bramble cluster init` printed it")
        board = _str(cluster, "board", "[cluster] ")
        if board is not None and not FUNCTION_RE.match(board):
            raise ConfigError(f"[cluster] board {board!r}: lower-case letters, digits and '-'")
        labels = cluster.get("labels", [])
        if not isinstance(labels, list) or not all(isinstance(l, str) and LABEL_RE.match(l) for l in labels):
            raise ConfigError('[cluster] labels: a list of "KEY=VALUE" strings, e.g. ["zone=garage"]')
        config.cluster = Cluster(join, board, labels)

    functions = data.get("function", [])
    if not isinstance(functions, list):
        raise ConfigError("function: expected [[function]] tables")
    names = set()
    for i, f in enumerate(functions, 1):
        where = f"[[function]] #{i} "
        if not isinstance(f, dict):
            raise ConfigError(f"{where}: expected a table")
        _unknown(f, {"name", "image", "archive", "env", "labels", "annotations", "memory", "cpu"}, where)
        name = _str(f, "name", where, required=True)
        if not FUNCTION_RE.match(name):
            raise ConfigError(f"{where}name {name!r}: lower-case letters, digits and '-' (a DNS label)")
        if name in names:
            raise ConfigError(f"{where}name {name!r}: named twice")
        names.add(name)
        image = _str(f, "image", where, required=True)
        if not image.strip() or any(c.isspace() for c in image):
            raise ConfigError(f"{where}image {image!r}: an image reference such as hello:latest")
        archive = _str(f, "archive", where)
        if archive is not None and (".." in Path(archive).parts or not archive.strip()):
            raise ConfigError(f"{where}archive {archive!r}: a path on the boot partition (or an absolute path)")
        for key in ("memory", "cpu"):
            value = _str(f, key, where)
            if value is not None and not QUANTITY_RE.match(value):
                raise ConfigError(f"{where}{key} {value!r}: a quantity such as 64Mi or 500m")
        config.functions.append(
            Function(
                name,
                image,
                archive,
                _str_map(f, "env", where),
                _str_map(f, "labels", where),
                _str_map(f, "annotations", where),
                _str(f, "memory", where),
                _str(f, "cpu", where),
            )
        )
    return config


# --------------------------------------------------------------------------------------------
# Applying


def wpa_psk(ssid: str, password: str) -> str:
    """The WPA2 pre-shared key (what wpa_passphrase prints): no plaintext password on disk."""
    if re.match(r"^[0-9a-fA-F]{64}$", password):
        return password.lower()
    return hashlib.pbkdf2_hmac("sha1", password.encode(), ssid.encode(), 4096, 32).hex()


def wpa_supplicant_conf(wifi: Wifi) -> str:
    lines = [
        "# Written at first boot from the boot partition's bramble-firstboot.toml.",
        "ctrl_interface=DIR=/run/wpa_supplicant GROUP=netdev",
        "update_config=1",
        f"country={wifi.country}",
        "",
        "network={",
        f"\tssid={wifi.ssid.encode().hex()}",
    ]
    if wifi.password is None:
        lines.append("\tkey_mgmt=NONE")
    else:
        lines.append("\tkey_mgmt=WPA-PSK WPA-PSK-SHA256")
        lines.append(f"\tpsk={wpa_psk(wifi.ssid, wifi.password)}")
    if wifi.hidden:
        lines.append("\tscan_ssid=1")
    lines.append("}")
    return "\n".join(lines) + "\n"


def scrub(text: str) -> str:
    """The file's text with every secret line replaced by a comment saying it was applied."""
    pattern = re.compile(r"^(\s*)(" + "|".join(SECRET_KEYS) + r")(\s*=).*$")
    out = []
    for line in text.splitlines():
        m = pattern.match(line)
        out.append(f"{m.group(1)}# {m.group(2)} = (applied at first boot, then removed from this card)" if m else line)
    return "\n".join(out) + "\n"


def write_file(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def shred(path: Path) -> None:
    """Overwrites a file's bytes in place (FAT keeps the same clusters), then deletes it."""
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.write(b"\0" * size)
        f.flush()
        os.fsync(f.fileno())
    path.unlink()


def state_dir(root: Path) -> Path:
    """bramble's state directory: `state_dir` of /etc/bramble/config.toml, else the default."""
    try:
        config = tomllib.loads((root / "etc/bramble/config.toml").read_text())
        value = config.get("state_dir")
        if isinstance(value, str) and value.startswith("/"):
            return root / value.lstrip("/")
    except (OSError, tomllib.TOMLDecodeError):
        pass
    return root / "var/lib/bramble"


def _run(cmd: list[str]) -> None:
    subprocess.run(cmd, check=True)


class Applier:
    """Applies a Config to the system under `root` ("/" on the board; a tree in tests).
    Commands (useradd, hostname, ...) go through `run`, which tests replace."""

    def __init__(self, root: Path, boot: Path, run=_run, live: bool = True):
        self.root = root
        self.boot = boot
        self.run = run
        self.live = live  # the running system (hostname now, not only in /etc)
        self.report: list[str] = []

    def note(self, message: str) -> None:
        self.report.append(message)
        print(f"bramble-firstboot: {message}", flush=True)

    def check_system(self, config: Config) -> None:
        """What the file needs from this system (the image), checked before anything changes."""
        if config.timezone and not (self.root / "usr/share/zoneinfo" / config.timezone).is_file():
            raise ConfigError(f"timezone {config.timezone!r} is not a known time zone (see /usr/share/zoneinfo)")
        for f in config.functions:
            if f.archive is not None and not self.archive_path(f.archive).is_file():
                raise ConfigError(f"[[function]] {f.name}: archive {f.archive} is not on the card")

    def archive_path(self, archive: str) -> Path:
        if archive.startswith("/"):
            return self.root / archive.lstrip("/")
        return self.boot / archive

    def apply(self, config: Config) -> None:
        self.check_system(config)
        if config.hostname:
            self.hostname(config.hostname)
        if config.timezone:
            self.timezone(config.timezone)
        if config.user:
            self.user(config.user)
        if config.wifi:
            self.wifi(config.wifi)
        if config.bramble:
            self.credentials(config.bramble)
        if config.cluster:
            self.cluster(config.cluster)
        self.queue_functions(config.functions)

    def hostname(self, name: str) -> None:
        write_file(self.root / "etc/hostname", name + "\n")
        hosts = self.root / "etc/hosts"
        lines = hosts.read_text().splitlines() if hosts.exists() else ["127.0.0.1\tlocalhost"]
        lines = [l for l in lines if not l.startswith("127.0.1.1")]
        lines.insert(1 if lines else 0, f"127.0.1.1\t{name}")
        write_file(hosts, "\n".join(lines) + "\n")
        if self.live:
            self.run(["hostname", name])
        self.note(f"hostname {name} (on the LAN: {name}.local)")

    def timezone(self, tz: str) -> None:
        localtime = self.root / "etc/localtime"
        if localtime.is_symlink() or localtime.exists():
            localtime.unlink()
        localtime.symlink_to(f"/usr/share/zoneinfo/{tz}")
        write_file(self.root / "etc/timezone", tz + "\n")
        self.note(f"time zone {tz}")

    def _passwd_entry(self, name: str):
        for line in (self.root / "etc/passwd").read_text().splitlines():
            parts = line.split(":")
            if parts[0] == name:
                return int(parts[2]), int(parts[3]), parts[5]
        return None

    def user(self, user: User) -> None:
        groups = {l.split(":")[0] for l in (self.root / "etc/group").read_text().splitlines() if l}
        wanted = [g for g in USER_GROUPS if g in groups and (user.sudo or g != "sudo")]
        if self._passwd_entry(user.name) is None:
            cmd = ["useradd", "--create-home", "--user-group", "--shell", "/bin/bash"]
            if wanted:
                cmd += ["--groups", ",".join(wanted)]
            self.run(cmd + [user.name])
            self.note(f"user {user.name} created (groups: {', '.join(wanted) or 'none'})")
        else:
            if wanted:
                self.run(["usermod", "--append", "--groups", ",".join(wanted), user.name])
            self.note(f"user {user.name} exists: keys and groups updated")
        if user.password_hash:
            self.run(["usermod", "--password", user.password_hash, user.name])
            self.note(f"user {user.name}: password set from password_hash")
        else:
            self.note(f"user {user.name}: no password (log in with the SSH key)")
        entry = self._passwd_entry(user.name)
        if entry is None:
            raise RuntimeError(f"useradd did not create {user.name}")
        uid, gid, home = entry
        home_dir = self.root / home.lstrip("/")
        ssh = home_dir / ".ssh"
        ssh.mkdir(parents=True, exist_ok=True)
        keys_file = ssh / "authorized_keys"
        existing = keys_file.read_text().splitlines() if keys_file.exists() else []
        keys = existing + [k for k in user.ssh_authorized_keys if k not in existing]
        write_file(keys_file, "".join(k + "\n" for k in keys), 0o600)
        os.chmod(ssh, 0o700)
        if os.geteuid() == 0:
            for p in (home_dir, ssh, keys_file):
                os.chown(p, uid, gid)
        self.note(f"user {user.name}: {len(user.ssh_authorized_keys)} SSH key(s) in {home}/.ssh/authorized_keys")
        sudoers = self.root / f"etc/sudoers.d/010-bramble-firstboot-{user.name}"
        if user.sudo:
            rule = "ALL=(ALL:ALL) ALL" if user.password_hash else "ALL=(ALL:ALL) NOPASSWD: ALL"
            write_file(sudoers, f"# bramble-firstboot: [user] {user.name}, sudo = true\n{user.name} {rule}\n", 0o440)
            self.note(f"user {user.name}: sudo" + ("" if user.password_hash else " without a password (there is none)"))
        elif sudoers.exists():
            sudoers.unlink()

    def wifi(self, wifi: Wifi) -> None:
        write_file(self.root / "etc/wpa_supplicant/wpa_supplicant-wlan0.conf", wpa_supplicant_conf(wifi), 0o600)
        write_file(
            self.root / "etc/modprobe.d/bramble-wifi-country.conf",
            f"# Wi-Fi regulatory domain, from bramble-firstboot.toml\noptions cfg80211 ieee80211_regdom={wifi.country}\n",
        )
        security = "open network" if wifi.password is None else "WPA2 key stored as its PSK"
        self.note(f"Wi-Fi: country {wifi.country}, network {wifi.ssid!r} ({security}){', hidden' if wifi.hidden else ''}")

    def credentials(self, creds: Credentials) -> None:
        secrets = state_dir(self.root) / "secrets"
        secrets.mkdir(parents=True, exist_ok=True)
        os.chmod(secrets, 0o700)
        write_file(secrets / "basic-auth-user", creds.user, 0o600)
        write_file(secrets / "basic-auth-password", creds.password, 0o600)
        self.note(f"bramble API credentials: user {creds.user}, password from the file (in {secrets.relative_to(self.root)})")

    def cluster(self, cluster: Cluster) -> None:
        """A `[cluster]` section in bramble's configuration: bramble joins at its first start
        (`cluster.join`), and never again once it has left. The file becomes root-only: the
        join token is a credential."""
        path = self.root / "etc/bramble/config.toml"
        text = path.read_text() if path.exists() else ""
        lines = [f"join = {json.dumps(cluster.join)}"]
        if cluster.board:
            lines.append(f"board = {json.dumps(cluster.board)}")
        if cluster.labels:
            lines.append(f"labels = {json.dumps(cluster.labels)}")
        existing = text.splitlines()
        header = next((i for i, l in enumerate(existing) if l.strip() == "[cluster]"), None)
        if header is None:
            text = text.rstrip("\n") + ("\n\n" if text.strip() else "") + "[cluster]\n" + "\n".join(lines) + "\n"
        else:
            keys = {l.split("=")[0].strip() for l in lines}
            body = existing[header + 1 :]
            end = next((i for i, l in enumerate(body) if l.strip().startswith("[")), len(body))
            kept = [l for l in body[:end] if l.split("=")[0].strip() not in keys]
            text = "\n".join(existing[: header + 1] + lines + kept + body[end:]) + "\n"
        write_file(path, text, 0o600)
        address = cluster.join.split()[1]
        self.note(f"cluster: joins the cluster of {address} at bramble's first start" + (f" as board {cluster.board}" if cluster.board else ""))

    def queue_functions(self, functions: list[Function]) -> None:
        pending = self.root / PENDING
        if not functions:
            return
        items = []
        for f in functions:
            item = {
                "name": f.name,
                "image": f.image,
                "env": f.env,
                "labels": f.labels,
                "annotations": f.annotations,
                "memory": f.memory,
                "cpu": f.cpu,
                "archive": None,
            }
            if f.archive is not None:
                # The path as the running system sees it (the boot directory as given).
                item["archive"] = f.archive if f.archive.startswith("/") else str(self.boot / f.archive)
            items.append(item)
        write_file(pending, json.dumps(items, indent=1) + "\n", 0o600)
        self.note("functions to deploy once bramble runs: " + ", ".join(f.name for f in functions))


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def append_log(boot: Path, lines: list[str]) -> None:
    try:
        with open(boot / LOG_NAME, "a") as f:
            f.write("".join(line + "\n" for line in lines))
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        print(f"bramble-firstboot: cannot write {boot / LOG_NAME}: {e}", file=sys.stderr)


def finish(boot: Path, text: str, config: Config) -> None:
    """Removes the secrets from the boot partition: the scrubbed copy is kept as
    bramble-firstboot.applied.toml (provably without the secret values), the original is
    overwritten and deleted."""
    source = boot / FILE_NAME
    scrubbed = scrub(text)
    leaked = [s for s in config.secrets() if s in scrubbed]
    try:
        tomllib.loads(scrubbed)
        valid = True
    except tomllib.TOMLDecodeError:
        valid = False
    if not leaked and valid:
        header = (
            f"# Applied at first boot ({now()}); the passwords were removed from this copy.\n"
            f"# To change settings later: write a new {FILE_NAME} (with the passwords it needs) and reboot.\n"
        )
        write_file(boot / APPLIED_NAME, header + scrubbed)
    shred(source)


def cmd_apply(args) -> int:
    boot, root = Path(args.boot), Path(args.root)
    source = boot / FILE_NAME
    if not source.exists():
        print(f"bramble-firstboot: no {source}: nothing to do")
        return 0
    text = source.read_text(encoding="utf-8-sig")  # a BOM from a Windows editor is fine
    applier = Applier(root, boot, live=(args.root == "/"))
    try:
        config = parse(text)
        applier.apply(config)
    except ConfigError as e:
        message = f"{FILE_NAME}: {e}"
        print(f"bramble-firstboot: ERROR {message}", file=sys.stderr, flush=True)
        append_log(boot, [f"{now()}  NOT applied (nothing changed; fix the file and boot again): {message}"])
        return 1
    finish(boot, text, config)
    os.sync()
    append_log(boot, [f"{now()}  applied {FILE_NAME}:"] + [f"    {line}" for line in applier.report]
               + [f"    secrets removed from this partition; the rest is in {APPLIED_NAME}"])
    return 0


def gateway_url(root: Path = Path("/")) -> str:
    """The local gateway, from `listen` of /etc/bramble/config.toml (default :8080)."""
    port = "8080"
    try:
        listen = tomllib.loads((root / "etc/bramble/config.toml").read_text()).get("listen")
        if isinstance(listen, str) and ":" in listen:
            port = listen.rsplit(":", 1)[1]
    except (OSError, tomllib.TOMLDecodeError):
        pass
    return f"http://127.0.0.1:{port}"


def deploy_commands(item: dict) -> list[list[str]]:
    """The bramble CLI calls that import and deploy one queued function."""
    cmds = []
    if item.get("archive"):
        cmds.append(["bramble", "image", "import", item["archive"], "--name", item["image"]])
    cmd = ["bramble", "deploy", "--name", item["name"], "--image", item["image"]]
    for flag, key in (("--env", "env"), ("--label", "labels"), ("--annotation", "annotations")):
        for k, v in sorted((item.get(key) or {}).items()):
            cmd += [flag, f"{k}={v}"]
    for key in ("memory", "cpu"):
        if item.get(key):
            cmd += [f"--{key}", item[key]]
    cmds.append(cmd)
    return cmds


def wait_for_gateway(url: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=5) as r:
                if r.status == 200:
                    return True
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(1)
    return False


def cmd_deploy(args, run=subprocess.run) -> int:
    root, boot = Path(args.root), Path(args.boot)
    pending = root / PENDING
    if not pending.exists():
        return 0
    items = json.loads(pending.read_text())
    url = gateway_url(root)
    if not wait_for_gateway(url, args.timeout):
        print(f"bramble-firstboot: bramble does not answer on {url}; the functions stay queued", file=sys.stderr)
        return 1
    failed, lines = [], []
    for item in items:
        ok = True
        for cmd in deploy_commands(item):
            r = run(cmd, capture_output=True, text=True)
            if r.returncode != 0:
                ok = False
                message = (r.stderr or r.stdout).strip().splitlines()
                lines.append(f"    {item['name']}: FAILED: {' '.join(cmd[:3])}: {message[-1] if message else r.returncode}")
                break
        if ok:
            lines.append(f"    {item['name']}: deployed ({item['image']})")
        else:
            failed.append(item)
        print(f"bramble-firstboot: {lines[-1].strip()}", flush=True)
    append_log(boot, [f"{now()}  functions:"] + lines)
    if failed:
        write_file(pending, json.dumps(failed, indent=1) + "\n", 0o600)
        return 1
    pending.unlink()
    return 0


def cmd_check(args) -> int:
    try:
        config = parse(Path(args.file).read_text(encoding="utf-8-sig"))
    except (ConfigError, OSError) as e:
        print(f"{args.file}: {e}", file=sys.stderr)
        return 1
    parts = []
    if config.hostname:
        parts.append(f"hostname {config.hostname}")
    if config.user:
        parts.append(f"user {config.user.name} with {len(config.user.ssh_authorized_keys)} key(s)")
    if config.wifi:
        parts.append(f"Wi-Fi {config.wifi.ssid!r} ({config.wifi.country})")
    if config.bramble:
        parts.append(f"API user {config.bramble.user}")
    if config.functions:
        parts.append("functions " + ", ".join(f.name for f in config.functions))
    print(f"{args.file}: ok: " + ("; ".join(parts) or "nothing to apply"))
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    a = sub.add_parser("apply", help="apply the first-boot file (bramble-firstboot.service)")
    a.add_argument("--boot", default=BOOT_DIR)
    a.add_argument("--root", default="/")
    d = sub.add_parser("deploy", help="import and deploy the queued functions (bramble-firstboot-functions.service)")
    d.add_argument("--boot", default=BOOT_DIR)
    d.add_argument("--root", default="/")
    d.add_argument("--timeout", type=float, default=300)
    c = sub.add_parser("check", help="check a first-boot file (on a laptop, before the first boot)")
    c.add_argument("file")
    args = p.parse_args(argv)
    return {"apply": cmd_apply, "deploy": cmd_deploy, "check": cmd_check}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
