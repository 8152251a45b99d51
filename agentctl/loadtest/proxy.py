"""nginx in front of several `agentctl serve` replicas, as `agentctl loadtest --simulate --replicas N` runs it.

The site config is compose/nginx/agentctl.conf.template, the one compose uses too; around it, a main config that
keeps everything of nginx's (pid, logs, temporary files) in the run folder, so that it runs without privileges, on
a loopback port, and stops with the run.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

NGINX = "/usr/sbin/nginx"
TEMPLATE_NAME = "agentctl.conf.template"
# Passive health: one failed connection leaves a replica out for this long before nginx tries it again.
MAX_FAILS = 1
FAIL_TIMEOUT_SECONDS = 10

_MAIN_CONFIG = """\
# Written by agentctl loadtest: nginx with everything it writes kept under {prefix}.
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{
    worker_connections 4096;
}}
http {{
    access_log {prefix}/access.log;
    client_body_temp_path {prefix}/temp/client_body;
    proxy_temp_path {prefix}/temp/proxy;
    fastcgi_temp_path {prefix}/temp/fastcgi;
    uwsgi_temp_path {prefix}/temp/uwsgi;
    scgi_temp_path {prefix}/temp/scgi;
    include {prefix}/agentctl.conf;
}}
"""


class ProxyError(Exception):
    """nginx could not be found, configured or started: one line for the operator."""


def template_path() -> Path:
    """compose/nginx/agentctl.conf.template, the checkout's (a wheel carries it only if it bundles compose/)."""
    from agentctl.resources import bundled_dir

    try:
        return bundled_dir("compose") / "nginx" / TEMPLATE_NAME
    except FileNotFoundError:
        raise ProxyError(f"compose/nginx/{TEMPLATE_NAME} is not part of this installation of agentctl") from None


def render_site(template: str, *, listen: str, upstreams: Sequence[str]) -> str:
    """The template with its ${AGENTCTL_*} names substituted (as envsubst would), nginx's own $variables untouched."""
    values = {
        "AGENTCTL_PROXY_LISTEN": listen,
        "AGENTCTL_UPSTREAM_SERVERS": "\n    ".join(
            f"server {address} max_fails={MAX_FAILS} fail_timeout={FAIL_TIMEOUT_SECONDS}s;" for address in upstreams
        ),
    }
    return re.sub(r"\$\{(AGENTCTL_[A-Z_]+)\}", lambda found: values[found.group(1)], template)


def write_config(folder: Path, *, listen: str, upstreams: Sequence[str]) -> Path:
    """nginx.conf and agentctl.conf in ``folder`` (created, with its temp/ and logs); returns nginx.conf's path."""
    (folder / "temp").mkdir(parents=True, exist_ok=True)
    site = render_site(template_path().read_text(encoding="utf-8"), listen=listen, upstreams=upstreams)
    (folder / "agentctl.conf").write_text(site, encoding="utf-8")
    main = folder / "nginx.conf"
    main.write_text(_MAIN_CONFIG.format(prefix=folder), encoding="utf-8")
    return main


def nginx_binary() -> str:
    found = NGINX if Path(NGINX).is_file() else shutil.which("nginx")
    if not found:
        raise ProxyError("nginx is not installed: `make services` installs Debian's (/usr/sbin/nginx)")
    return found


def check_config(folder: Path, config: Path) -> subprocess.CompletedProcess[str]:
    """`nginx -t` on the config: (returncode, what nginx said)."""
    return subprocess.run(
        [nginx_binary(), "-t", "-p", str(folder), "-c", str(config), "-e", str(folder / "error.log")],
        capture_output=True,
        text=True,
        timeout=30,
    )


def start_nginx(folder: Path, config: Path, base_url: str, timeout: float = 30) -> subprocess.Popen[bytes]:
    """nginx in the foreground in a session of its own, until ``base_url``/health/ready answers through it."""
    checked = check_config(folder, config)
    if checked.returncode != 0:
        raise ProxyError(f"nginx refused its config: {checked.stderr.strip().splitlines()[-1:]}")
    with (folder / "nginx.out").open("wb") as output:
        process = subprocess.Popen(
            [nginx_binary(), "-p", str(folder), "-c", str(config), "-e", str(folder / "error.log"),
             "-g", "daemon off;"],
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ProxyError(f"nginx exited with {process.returncode}; see {folder / 'error.log'}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{base_url}/health/ready", timeout=2).status_code == 200:
                return process
        time.sleep(0.2)
    process.kill()
    raise ProxyError(f"nginx did not pass requests within {timeout:g} s; see {folder / 'error.log'}")
