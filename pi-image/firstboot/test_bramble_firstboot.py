"""Tests of the first-boot parser and applier (python3 -m unittest, from pi-image/check).

The applier runs against a temporary tree (`root`) and boot directory; commands such as
useradd are recorded by a fake runner that also edits the tree's /etc/passwd."""

import http.server
import json
import os
import stat
import subprocess
import sys
import tempfile
import threading
import tomllib
import unittest
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bramble_firstboot as fb  # noqa: E402

HERE = Path(__file__).resolve().parent
TEMPLATE = HERE.parent / "boot" / "bramble-firstboot.toml"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJbNdrHWxkk2ULQ0ud1b0Mj2sJxo9CH2rOQd1b3Ee5j/ you@laptop"

FULL = f"""
hostname = "Shelf-Pi-3"
timezone = "Europe/Berlin"

[user]
name = "pi"
ssh_authorized_keys = ["{KEY}"]

[wifi]
country = "de"
ssid = "Home \\"Net\\""
password = "correct horse battery"

[bramble]
user = "ops"
password = "s3cret-api-password"

[[function]]
name = "hello"
image = "hello:latest"
archive = "bramble-images/hello.tar"
env = {{ MESSAGE = "Hi", COUNT = 3 }}
memory = "32Mi"

[[function]]
name = "figlet"
image = "ghcr.io/openfaas/figlet:latest"
cpu = "500m"
labels = {{ "com.openfaas.scale.zero" = "true" }}
"""


class FakeRunner:
    """Records commands; `useradd` adds the user to the tree's /etc/passwd like the real one."""

    def __init__(self, root: Path):
        self.root = root
        self.commands = []

    def __call__(self, cmd):
        self.commands.append(cmd)
        if cmd[0] == "useradd":
            name = cmd[-1]
            with open(self.root / "etc/passwd", "a") as f:
                f.write(f"{name}:x:{os.getuid()}:{os.getgid()}::/home/{name}:/bin/bash\n")


def make_tree(tmp: Path):
    root, boot = tmp / "root", tmp / "boot"
    (root / "etc").mkdir(parents=True)
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (root / "etc/group").write_text("root:x:0:\nsudo:x:27:\nadm:x:4:\nnetdev:x:108:\n")
    (root / "etc/hosts").write_text("127.0.0.1\tlocalhost\n127.0.1.1\tbramble\n")
    zone = root / "usr/share/zoneinfo/Europe"
    zone.mkdir(parents=True)
    (zone / "Berlin").write_text("TZif")
    (root / "usr/share/zoneinfo/UTC").write_text("TZif")
    (boot / "bramble-images").mkdir(parents=True)
    (boot / "bramble-images/hello.tar").write_bytes(b"tar")
    return root, boot


class ParseTest(unittest.TestCase):
    def test_the_shipped_template_is_valid_and_deploys_the_demo(self):
        config = fb.parse(TEMPLATE.read_text())
        self.assertEqual(config.hostname, "bramble")
        self.assertIsNone(config.user)
        self.assertIsNone(config.wifi)
        self.assertEqual([(f.name, f.archive) for f in config.functions], [("hello", "bramble-images/hello.tar")])

    def test_the_template_with_every_example_uncommented_is_valid(self):
        lines = []
        for line in TEMPLATE.read_text().splitlines():
            # "# key = value" and "# [table]" examples become live; prose stays a comment.
            body = line[2:] if line.startswith("# ") else None
            live = False
            if body is not None:
                try:
                    tomllib.loads(body)
                    live = " = " in body or body.startswith("[")
                except tomllib.TOMLDecodeError:
                    pass
            lines.append(body if live else line)
        text = "\n".join(lines).replace('"$6$..."', '"$6$salt$hash"')
        text = text.replace("ssh-ed25519 AAAAC3Nza... you@laptop", KEY)
        config = fb.parse(text)
        self.assertEqual(config.timezone, "Europe/Berlin")
        self.assertEqual(config.user.name, "pi")
        self.assertEqual(config.wifi.ssid, "MyNetwork")
        self.assertEqual(config.bramble.user, "admin")

    def test_full_file(self):
        config = fb.parse(FULL)
        self.assertEqual(config.hostname, "shelf-pi-3")
        self.assertEqual(config.user.ssh_authorized_keys, [KEY])
        self.assertTrue(config.user.sudo)
        self.assertEqual(config.wifi.country, "DE")
        self.assertEqual(config.wifi.ssid, 'Home "Net"')
        self.assertEqual((config.bramble.user, config.bramble.password), ("ops", "s3cret-api-password"))
        hello, figlet = config.functions
        self.assertEqual(hello.env, {"MESSAGE": "Hi", "COUNT": "3"})
        self.assertEqual(hello.memory, "32Mi")
        self.assertIsNone(figlet.archive)
        self.assertEqual(figlet.labels, {"com.openfaas.scale.zero": "true"})
        self.assertEqual(sorted(config.secrets()), ["correct horse battery", "s3cret-api-password"])

    def test_empty_file_applies_nothing(self):
        config = fb.parse("# nothing\n")
        self.assertEqual(config, fb.Config())

    def test_a_single_key_string_is_accepted(self):
        config = fb.parse(f'[user]\nname = "pi"\nssh_authorized_keys = "{KEY}"\n')
        self.assertEqual(config.user.ssh_authorized_keys, [KEY])

    def test_mistakes_are_named(self):
        cases = {
            'hostnme = "x"': "unknown key(s) hostnme",
            'hostname = "-bad"': "hostname '-bad'",
            'hostname = "a_b"': "hostname 'a_b'",
            "hostname = 3": "expected a string",
            'timezone = "../../etc/passwd"': "timezone",
            '[user]\nname = "pi"': "no default password",
            '[user]\nname = "root"\nssh_authorized_keys = ["' + KEY + '"]': "system account",
            '[user]\nname = "Pi User"\nssh_authorized_keys = ["' + KEY + '"]': "lower-case",
            '[user]\nname = "pi"\nssh_authorized_keys = ["AAAAC3Nza"]': "not an SSH public key",
            '[user]\nname = "pi"\npassword_hash = "hunter2"': "never the password itself",
            '[user]\nname = "pi"\nssh_authorized_keys = ["' + KEY + '"]\nshell = "zsh"': "unknown key(s) shell",
            '[wifi]\nssid = "x"\npassword = "12345678"': "country: missing",
            '[wifi]\ncountry = "DEU"\nssid = "x"': "two-letter",
            '[wifi]\ncountry = "DE"\nssid = "x"\npassword = "short"': "8 to 63",
            '[wifi]\ncountry = "DE"\nssid = ""': "1 to 32 bytes",
            '[wifi]\ncountry = "DE"\nssid = "x"\nhidden = "yes"': "true or false",
            '[bramble]\npassword = "short"': "at least 8",
            '[bramble]\nuser = "a b"\npassword = "long enough"': "[bramble] user",
            '[[function]]\nname = "Hello"\nimage = "x"': "DNS label",
            '[[function]]\nname = "a"': "image: missing",
            '[[function]]\nname = "a"\nimage = "x"\n[[function]]\nname = "a"\nimage = "y"': "named twice",
            '[[function]]\nname = "a"\nimage = "x"\nmemory = "lots"': "quantity",
            '[[function]]\nname = "a"\nimage = "x"\narchive = "../../etc/shadow"': "archive",
            '[[function]]\nname = "a"\nimage = "x"\nenv = { A = true }': "expected a string",
            "wifi = 3": "expected a table",
            'hostname = "unterminated': "not valid TOML",
        }
        for text, expected in cases.items():
            with self.subTest(text=text):
                with self.assertRaises(fb.ConfigError) as ctx:
                    fb.parse(text)
                self.assertIn(expected, str(ctx.exception))


class WifiTest(unittest.TestCase):
    def test_psk_is_the_ieee_802_11i_test_vector(self):
        self.assertEqual(
            fb.wpa_psk("IEEE", "password"),
            "f42c6fc52df0ebef9ebb4b90b38a5f902e83fe1b135a70e23aed762e9710a12e",
        )

    def test_a_64_hex_digit_password_is_the_psk(self):
        psk = "AB" * 32
        self.assertEqual(fb.wpa_psk("x", psk), psk.lower())

    def test_config_holds_no_plaintext_and_quotes_nothing(self):
        conf = fb.wpa_supplicant_conf(fb.Wifi("GB", 'Café "5G"', "correct horse battery", hidden=True))
        self.assertNotIn("correct horse", conf)
        self.assertIn("country=GB\n", conf)
        self.assertIn("\tssid=" + 'Café "5G"'.encode().hex() + "\n", conf)
        self.assertIn("\tpsk=" + fb.wpa_psk('Café "5G"', "correct horse battery"), conf)
        self.assertIn("scan_ssid=1", conf)

    def test_open_network(self):
        conf = fb.wpa_supplicant_conf(fb.Wifi("US", "cafe"))
        self.assertIn("key_mgmt=NONE", conf)
        self.assertNotIn("psk=", conf)


class ScrubTest(unittest.TestCase):
    def test_secret_lines_become_comments_and_the_rest_stays(self):
        out = fb.scrub(FULL)
        self.assertNotIn("correct horse", out)
        self.assertNotIn("s3cret", out)
        self.assertIn('ssid = "Home \\"Net\\""', out)
        self.assertIn("# password = (applied at first boot", out)
        data = tomllib.loads(out)
        self.assertNotIn("password", data["wifi"])
        self.assertNotIn("password", data["bramble"])
        self.assertEqual(data["user"]["name"], "pi")

    def test_indented_and_hash_lines(self):
        out = fb.scrub('[user]\nname = "pi"\n  password_hash = "$6$a$b"\n')
        self.assertNotIn("$6$a$b", out)


class ApplyTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.root, self.boot = make_tree(Path(self.tmp.name))

    def tearDown(self):
        self.tmp.cleanup()

    def applier(self):
        self.runner = FakeRunner(self.root)
        return fb.Applier(self.root, self.boot, run=self.runner, live=False)

    def test_everything_is_applied(self):
        applier = self.applier()
        applier.apply(fb.parse(FULL))
        r = self.root
        self.assertEqual((r / "etc/hostname").read_text(), "shelf-pi-3\n")
        self.assertEqual((r / "etc/hosts").read_text(), "127.0.0.1\tlocalhost\n127.0.1.1\tshelf-pi-3\n")
        self.assertEqual(os.readlink(r / "etc/localtime"), "/usr/share/zoneinfo/Europe/Berlin")
        self.assertEqual((r / "etc/timezone").read_text(), "Europe/Berlin\n")
        # user: created with the groups the image has, key installed, sudo without password
        self.assertEqual(self.runner.commands[0][:5], ["useradd", "--create-home", "--user-group", "--shell", "/bin/bash"])
        self.assertIn("sudo,adm,netdev", self.runner.commands[0])
        keys = r / "home/pi/.ssh/authorized_keys"
        self.assertEqual(keys.read_text(), KEY + "\n")
        self.assertEqual(stat.S_IMODE(keys.stat().st_mode), 0o600)
        self.assertEqual(stat.S_IMODE((r / "home/pi/.ssh").stat().st_mode), 0o700)
        sudoers = r / "etc/sudoers.d/010-bramble-firstboot-pi"
        self.assertIn("pi ALL=(ALL:ALL) NOPASSWD: ALL", sudoers.read_text())
        self.assertEqual(stat.S_IMODE(sudoers.stat().st_mode), 0o440)
        # Wi-Fi: root-only file without the password
        wpa = r / "etc/wpa_supplicant/wpa_supplicant-wlan0.conf"
        self.assertEqual(stat.S_IMODE(wpa.stat().st_mode), 0o600)
        self.assertNotIn("correct horse", wpa.read_text())
        self.assertIn("ieee80211_regdom=DE", (r / "etc/modprobe.d/bramble-wifi-country.conf").read_text())
        # API credentials, where bramble reads them
        secrets = r / "var/lib/bramble/secrets"
        self.assertEqual((secrets / "basic-auth-user").read_text(), "ops")
        self.assertEqual((secrets / "basic-auth-password").read_text(), "s3cret-api-password")
        self.assertEqual(stat.S_IMODE((secrets / "basic-auth-password").stat().st_mode), 0o600)
        self.assertEqual(stat.S_IMODE(secrets.stat().st_mode), 0o700)
        # functions queued with the archive's path on the running system
        pending = json.loads((r / fb.PENDING).read_text())
        self.assertEqual([p["name"] for p in pending], ["hello", "figlet"])
        self.assertEqual(pending[0]["archive"], str(self.boot / "bramble-images/hello.tar"))
        self.assertIsNone(pending[1]["archive"])
        self.assertFalse(any("correct horse" in line or "s3cret" in line for line in applier.report))

    def test_state_dir_comes_from_bramble_config(self):
        (self.root / "etc/bramble").mkdir()
        (self.root / "etc/bramble/config.toml").write_text('# listen = "x"\nstate_dir = "/srv/bramble"\n')
        self.applier().credentials(fb.Credentials("admin", "password123"))
        self.assertEqual((self.root / "srv/bramble/secrets/basic-auth-password").read_text(), "password123")

    def test_existing_user_keeps_its_keys_and_gets_new_ones(self):
        with open(self.root / "etc/passwd", "a") as f:
            f.write(f"pi:x:{os.getuid()}:{os.getgid()}::/home/pi:/bin/bash\n")
        ssh = self.root / "home/pi/.ssh"
        ssh.mkdir(parents=True)
        (ssh / "authorized_keys").write_text("ssh-rsa OLD old@key\n")
        applier = self.applier()
        applier.user(fb.User("pi", [KEY], password_hash="$6$s$h", sudo=True))
        self.assertEqual(self.runner.commands[0][0], "usermod")
        self.assertIn(["usermod", "--password", "$6$s$h", "pi"], self.runner.commands)
        self.assertEqual((ssh / "authorized_keys").read_text(), "ssh-rsa OLD old@key\n" + KEY + "\n")
        self.assertIn("pi ALL=(ALL:ALL) ALL", (self.root / "etc/sudoers.d/010-bramble-firstboot-pi").read_text())

    def test_unknown_time_zone_or_missing_archive_changes_nothing(self):
        for text in ['hostname = "x"\ntimezone = "Mars/Olympus"',
                     'hostname = "x"\n[[function]]\nname = "a"\nimage = "a"\narchive = "nope.tar"']:
            with self.subTest(text=text):
                with self.assertRaises(fb.ConfigError):
                    self.applier().apply(fb.parse(text))
                self.assertFalse((self.root / "etc/hostname").exists())


JOIN = "bramble1.shelf.AAECAwQFBgcICQoLDA0OD2RlZmdoaWprbG1ub3BxcnPMWzwP 192.168.1.10:8080"


class ClusterTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.root, self.boot = make_tree(Path(self.tmp.name))

    def tearDown(self):
        self.tmp.cleanup()

    def test_a_join_section_goes_into_bramble_config_root_only(self):
        config = fb.parse(f'[cluster]\njoin = "{JOIN}"\nboard = "pi-garage"\nlabels = ["zone=garage"]\n')
        self.assertEqual(config.secrets(), [JOIN.split()[0]])
        (self.root / "etc/bramble").mkdir()
        path = self.root / "etc/bramble/config.toml"
        path.write_text('listen = "0.0.0.0:8080"\n#[cluster]\n#board_port = 7425\n')
        fb.Applier(self.root, self.boot, run=FakeRunner(self.root), live=False).apply(config)
        written = tomllib.loads(path.read_text())
        self.assertEqual(written["listen"], "0.0.0.0:8080")
        self.assertEqual(written["cluster"], {"join": JOIN, "board": "pi-garage", "labels": ["zone=garage"]})
        self.assertEqual(stat.S_IMODE(path.stat().st_mode), 0o600)

    def test_an_existing_cluster_section_is_completed_not_repeated(self):
        (self.root / "etc/bramble").mkdir()
        path = self.root / "etc/bramble/config.toml"
        path.write_text('[cluster]\njoin = "old"\ndead_after = "20s"\n\n[hardware]\nbackend = "cdev"\n')
        fb.Applier(self.root, self.boot, run=FakeRunner(self.root), live=False).apply(fb.parse(f'[cluster]\njoin = "{JOIN}"\n'))
        written = tomllib.loads(path.read_text())
        self.assertEqual(written["cluster"], {"join": JOIN, "dead_after": "20s"})
        self.assertEqual(written["hardware"], {"backend": "cdev"})

    def test_the_token_is_scrubbed_from_the_card(self):
        out = fb.scrub(f'[cluster]\njoin = "{JOIN}"\nboard = "b"\n')
        self.assertNotIn("bramble1.", out)
        self.assertIn('board = "b"', out)

    def test_mistakes_are_named(self):
        for text, needle in [
            ("[cluster]\n", "join"),
            ('[cluster]\njoin = "nonsense"\n', "TOKEN ADDRESS"),
            (f'[cluster]\njoin = "{JOIN}"\nboard = "Bad Name"\n', "board"),
            (f'[cluster]\njoin = "{JOIN}"\nlabels = "zone=garage"\n', "labels"),
            (f'[cluster]\njoin = "{JOIN}"\nzone = "x"\n', "unknown"),
        ]:
            with self.assertRaises(fb.ConfigError) as e:
                fb.parse(text)
            self.assertIn(needle, str(e.exception), text)


class CommandTest(unittest.TestCase):
    """`apply` as the unit runs it: the file is consumed, its secrets leave the card."""

    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.root, self.boot = make_tree(Path(self.tmp.name))
        self.args = SimpleNamespace(boot=str(self.boot), root=str(self.root))

    def tearDown(self):
        self.tmp.cleanup()

    def test_apply_removes_the_secrets_from_the_boot_partition(self):
        text = FULL.replace("[user]\nname = \"pi\"\nssh_authorized_keys = [\"" + KEY + "\"]\n", "")
        (self.boot / fb.FILE_NAME).write_text(text)
        self.assertEqual(fb.cmd_apply(self.args), 0)
        self.assertFalse((self.boot / fb.FILE_NAME).exists())
        applied = (self.boot / fb.APPLIED_NAME).read_text()
        self.assertNotIn("correct horse", applied)
        self.assertNotIn("s3cret", applied)
        self.assertIn("Applied at first boot", applied)
        self.assertEqual(tomllib.loads(applied)["hostname"], "Shelf-Pi-3")  # still TOML, for reading
        log = (self.boot / fb.LOG_NAME).read_text()
        self.assertIn("applied bramble-firstboot.toml", log)
        self.assertIn("hostname shelf-pi-3", log)
        self.assertNotIn("correct horse", log)
        self.assertNotIn("s3cret", log)
        # the board got them
        self.assertEqual((self.root / "var/lib/bramble/secrets/basic-auth-password").read_text(), "s3cret-api-password")
        # nothing left anywhere on the boot partition
        for p in self.boot.rglob("*"):
            if p.is_file():
                self.assertNotIn(b"s3cret", p.read_bytes(), p)

    def test_a_mistake_applies_nothing_and_keeps_the_file(self):
        text = 'hostname = "pi"\n[wifi]\ncountry = "DE"\nssid = "x"\npassword = "short"\n'
        (self.boot / fb.FILE_NAME).write_text(text)
        self.assertEqual(fb.cmd_apply(self.args), 1)
        self.assertEqual((self.boot / fb.FILE_NAME).read_text(), text)
        self.assertFalse((self.root / "etc/hostname").exists())
        self.assertIn("NOT applied", (self.boot / fb.LOG_NAME).read_text())

    def test_no_file_is_nothing_to_do(self):
        self.assertEqual(fb.cmd_apply(self.args), 0)
        self.assertFalse((self.boot / fb.LOG_NAME).exists())

    def test_a_windows_bom_is_fine(self):
        (self.boot / fb.FILE_NAME).write_bytes(b"\xef\xbb\xbfhostname = \"pi\"\r\n")
        self.assertEqual(fb.cmd_apply(self.args), 0)
        self.assertEqual((self.root / "etc/hostname").read_text(), "pi\n")

    def test_check_command(self):
        path = self.boot / "x.toml"
        path.write_text(FULL)
        self.assertEqual(fb.main(["check", str(path)]), 0)
        path.write_text('hostname = "-"')
        self.assertEqual(fb.main(["check", str(path)]), 1)

    def test_check_runs_as_a_script(self):
        r = subprocess.run([sys.executable, str(HERE / "bramble_firstboot.py"), "check", str(TEMPLATE)],
                           capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("ok: hostname bramble; functions hello", r.stdout)


class DeployTest(unittest.TestCase):
    def test_commands(self):
        item = {"name": "hello", "image": "hello:latest", "archive": "/boot/firmware/bramble-images/hello.tar",
                "env": {"B": "2", "A": "1"}, "labels": {"l": "v"}, "annotations": {}, "memory": "32Mi", "cpu": None}
        self.assertEqual(fb.deploy_commands(item), [
            ["bramble", "image", "import", "/boot/firmware/bramble-images/hello.tar", "--name", "hello:latest"],
            ["bramble", "deploy", "--name", "hello", "--image", "hello:latest", "--env", "A=1", "--env", "B=2",
             "--label", "l=v", "--memory", "32Mi"],
        ])
        self.assertEqual(len(fb.deploy_commands({"name": "f", "image": "ghcr.io/x/f:1"})), 1)

    def test_deploy_waits_for_the_gateway_and_keeps_what_failed(self):
        class Health(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200 if self.path == "/healthz" else 404)
                self.end_headers()

            def log_message(self, *a):
                pass

        server = http.server.HTTPServer(("127.0.0.1", 0), Health)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self.addCleanup(server.server_close)
        self.addCleanup(server.shutdown)
        with tempfile.TemporaryDirectory() as tmp:
            root, boot = make_tree(Path(tmp))
            (root / "etc/bramble").mkdir()
            (root / "etc/bramble/config.toml").write_text(f'listen = "0.0.0.0:{server.server_port}"\n')
            self.assertEqual(fb.gateway_url(root), f"http://127.0.0.1:{server.server_port}")
            pending = root / fb.PENDING
            pending.parent.mkdir(parents=True)
            pending.write_text(json.dumps([{"name": "good", "image": "a"}, {"name": "bad", "image": "b"}]))
            calls = []

            def run(cmd, **kw):
                calls.append(cmd)
                bad = "bad" in cmd
                return SimpleNamespace(returncode=1 if bad else 0, stdout="", stderr="error: no such image b\n" if bad else "")

            args = SimpleNamespace(root=str(root), boot=str(boot), timeout=10)
            self.assertEqual(fb.cmd_deploy(args, run=run), 1)
            self.assertEqual([c[3] for c in calls], ["good", "bad"])
            self.assertEqual([i["name"] for i in json.loads(pending.read_text())], ["bad"])
            log = (boot / fb.LOG_NAME).read_text()
            self.assertIn("good: deployed", log)
            self.assertIn("bad: FAILED: bramble deploy --name: error: no such image b", log)
            # next boot: the remaining one succeeds, the queue is gone
            self.assertEqual(fb.cmd_deploy(args, run=lambda cmd, **kw: SimpleNamespace(returncode=0, stdout="", stderr="")), 0)
            self.assertFalse(pending.exists())


if __name__ == "__main__":
    unittest.main()
