"""irctest's controller for zchat's IRC gateway (docs/irc.md, "irctest").

irctest (../shared/irctest, progval/irctest) runs this with
``--controller zchat_controller`` and this folder on PYTHONPATH. For each test it starts,
in a temporary directory, a real broker (plain transport on loopback, cheap password
hashing, generous rate limits) and the real gateway on the port irctest gives, in one
process (zchat_irctest_server.py; ``ZCHAT_IRCTEST_SEPARATE=1``: ``zchat broker`` and
``zchat irc`` as two), with ``[irc] guests = true`` (irctest's clients connect without
credentials) and ``autojoin = false`` (a guest's account is in ``lobby``, which irctest
does not expect to see). ``registerUser`` creates an account with ``zchat register``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from irctest.basecontrollers import BaseServerController, DirectoryBasedController
from irctest.runner import NotImplementedByController
from irctest.specifications import Capabilities

ZCHAT = [sys.executable, "-m", "zchat"]
#: The broker and the gateway in one process (the default: one Python start per test),
#: or ZCHAT_IRCTEST_SEPARATE=1: ``zchat broker`` and ``zchat irc`` as two processes.
SEPARATE = os.environ.get("ZCHAT_IRCTEST_SEPARATE") == "1"
SERVER = Path(__file__).resolve().parent / "zchat_irctest_server.py"

CONFIG = """\
[broker]
router = "tcp://127.0.0.1:{router}"
pub = "tcp://127.0.0.1:{pub}"
data_dir = "{data}"
encryption = "none"
log_level = "warning"
argon2_memory_kib = 1024
argon2_time_cost = 1
min_password_chars = 1
send_rate_per_s = 1000.0
send_burst = 1000
login_rate_per_s = 1000.0
login_burst = 1000
account_send_rate_per_s = 1000.0
account_send_burst = 1000
presence_rate_per_s = 1000.0
presence_burst = 1000
room_create_rate_per_s = 1000.0
room_create_burst = 1000
max_rooms_created = 0

[client]
server = "tcp://127.0.0.1:{router}"
encryption = "none"

[irc]
listen = "127.0.0.1:{port}"
guests = true
autojoin = false
server_name = "My.Little.Server"
"""


class ZchatController(BaseServerController, DirectoryBasedController):
    software_name = "zchat"
    supported_sasl_mechanisms = {"PLAIN"}
    supports_sts = False
    _port_wait_interval = 0.02
    capabilities = frozenset((
        Capabilities.ACCOUNT_TAG,
        Capabilities.AWAY_NOTIFY,
        Capabilities.BATCH,
        Capabilities.LABELED_RESPONSE,
        Capabilities.ECHO_MESSAGE,
        Capabilities.EXTENDED_JOIN,
        Capabilities.MESSAGE_TAGS,
        Capabilities.MULTI_PREFIX,
        Capabilities.SERVER_TIME,
    ))

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.broker: subprocess.Popen | None = None

    def run(self, hostname: str, port: int, *, password: str | None, ssl: bool,
            run_services: bool, faketime: str | None, websocket_hostname: str | None,
            websocket_port: int | None) -> None:
        if password is not None:
            raise NotImplementedByController("server password (PASS is the zchat "
                                             "account's password)")
        if ssl:
            raise NotImplementedByController("TLS in irctest")
        if websocket_hostname is not None:
            raise NotImplementedByController("Websocket")
        assert self.proc is None
        self.hostname, self.port = hostname, port
        self.create_config()
        assert self.directory is not None
        _, router = self.get_hostname_and_port()
        _, pub = self.get_hostname_and_port()
        data = self.directory / "data"
        self.config_path = self.directory / "zchat.toml"
        self.config_path.write_text(CONFIG.format(data=data, router=router, pub=pub,
                                                  host=hostname, port=port))
        self.env = {**os.environ, "XDG_CONFIG_HOME": str(self.directory / "xdg"),
                    "XDG_DATA_HOME": str(self.directory / "xdg-data")}
        if SEPARATE:
            self.broker = self.execute(
                [*ZCHAT, "broker", "--config", str(self.config_path)],
                proc_name="zchat-broker", env=self.env)
            self.proc = self.execute([*ZCHAT, "irc", "--config", str(self.config_path)],
                                     proc_name="zchat-irc", env=self.env)
        else:
            self.proc = self.execute([sys.executable, str(SERVER), str(self.config_path)],
                                     proc_name="zchat", env=self.env)

    def wait_for_services(self) -> None:
        """Accounts are the broker's own: there are no separate services to wait for."""
        self.wait_for_port()

    def registerUser(self, case: Any, username: str, password: str | None = None) -> None:
        done = subprocess.run([*ZCHAT, "register", username, "--config",
                               str(self.config_path)],
                              env={**self.env, "ZCHAT_PASSWORD": password or "password"},
                              capture_output=True, text=True, timeout=20)
        if done.returncode != 0 and "(409)" in done.stderr:
            # a guest account of that name (the gateway made it when a client connected
            # with that nick and no password): give it this password, as an operator would
            done = subprocess.run([*ZCHAT, "admin", "reset-password", username, "--stdin",
                                   "--config", str(self.config_path), "--db",
                                   str(self.directory / "data" / "zchat.db")],
                                  input=(password or "password") + "\n", env=self.env,
                                  capture_output=True, text=True, timeout=20)
        if done.returncode != 0:
            raise AssertionError(f"zchat register {username}: {done.stderr.strip()}")

    def kill_proc(self) -> None:
        super().kill_proc()
        if self.broker is not None:
            self.broker.kill()  # a throw-away broker: its clean stop is tested elsewhere
            try:
                self.broker.wait(5)
            except subprocess.TimeoutExpired:
                self.broker.kill()
                self.broker.wait()
            self.broker = None


def get_irctest_controller_class() -> type[ZchatController]:
    return ZchatController


