"""The deployment files (`deploy/`, `Containerfile`), checked without running what they
describe: HAProxy and nginx validate their configurations (`haproxy -c`, `nginx -t`,
on filled-in copies in a temporary directory), the Kubernetes manifest is read with
PyYAML and the Containerfile as text, and every flag they give selserve must be one
that `python -m selserve --help` lists.

A missing tool skips its tests, naming the Debian package: haproxy, nginx (or
nginx-light), libnginx-mod-stream for the PROXY protocol variant.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import ROOT
from tls_certs import make_certs

from selserve.config import Config

pytestmark = pytest.mark.timeout(60)

DEPLOY = ROOT / "deploy"
CONTAINERFILE = ROOT / "Containerfile"
KUBERNETES = DEPLOY / "kubernetes.yaml"

# What the tests put in the templates' placeholders: haproxy reads them from its
# environment ("${FRONT_PORT}"), nginx from a filled-in copy ("@FRONT_PORT@").
# Neither `haproxy -c` nor `nginx -t` binds, so the ports need not be free.
PORTS = {"FRONT_PORT": "18080", "APP1_PORT": "18001", "APP2_PORT": "18002"}
NGINX_TOKEN = re.compile(r"@[A-Z0-9_]+@")


def find_tool(name: str) -> str | None:
    """`name` on PATH, or in the sbin directories a non-root PATH leaves out."""
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/local/sbin")


HAPROXY = find_tool("haproxy")
NGINX = find_tool("nginx")
needs_haproxy = pytest.mark.skipif(HAPROXY is None, reason="haproxy missing (Debian: haproxy)")
needs_nginx = pytest.mark.skipif(NGINX is None, reason="nginx missing (Debian: nginx-light)")


def run(argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30, **kwargs
    )


def shown(result: subprocess.CompletedProcess) -> str:
    return f"exit {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"


def options(argv: list[str]) -> dict[str, str]:
    """The flags of a selserve command line with their values ("--flag VALUE" or
    "--flag=VALUE"; "" for a flag followed by another flag or by nothing). The last of
    a repeated flag wins, as it does for selserve's own parser."""
    found = {}
    for index, word in enumerate(argv):
        if not word.startswith("--"):
            continue
        name, equals, value = word.partition("=")
        if not equals:
            following = argv[index + 1 : index + 2]
            value = following[0] if following and not following[0].startswith("--") else ""
        found[name] = value
    return found


def bind_port(flags: dict[str, str]) -> int:
    """The TCP port of --bind HOST:PORT (or [IPV6]:PORT)."""
    return int(flags["--bind"].rpartition(":")[2])


@pytest.fixture(scope="module")
def selserve_flags() -> set[str]:
    """Every flag `python -m selserve --help` lists."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["COLUMNS"] = "200"  # (fewer wrapped lines in the help)
    result = run([sys.executable, "-m", "selserve", "--help"], cwd=ROOT, env=env)
    assert result.returncode == 0, shown(result)
    return set(re.findall(r"--[a-z][a-z0-9-]*[a-z0-9]", result.stdout))


# -- Containerfile


def container_instructions() -> list[tuple[str, str]]:
    """(KEYWORD, arguments) for each instruction of the Containerfile's last stage,
    continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", CONTAINERFILE.read_text())
    instructions = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, arguments = line.partition(" ")
            if keyword.upper() == "FROM":
                instructions.clear()
            instructions.append((keyword.upper(), arguments.strip()))
    return instructions


def container_instruction(keyword: str) -> str | None:
    """The arguments of the last `keyword` instruction (the one that counts)."""
    found = [arguments for name, arguments in container_instructions() if name == keyword]
    return found[-1] if found else None


def container_argv() -> list[str]:
    """ENTRYPOINT followed by CMD, each in exec form (a JSON array)."""
    argv = []
    for keyword in ("ENTRYPOINT", "CMD"):
        arguments = container_instruction(keyword)
        if arguments is not None:
            argv += json.loads(arguments)
    return argv


def test_containerfile_runs_as_a_non_root_user():
    user = container_instruction("USER")
    assert user is not None, "no USER: the container would run as root"
    assert user.partition(":")[0] not in ("root", "0"), user


def test_containerfile_command_is_exec_form_so_selserve_gets_sigterm():
    for keyword in ("ENTRYPOINT", "CMD"):
        arguments = container_instruction(keyword)
        assert arguments is not None and arguments.startswith("["), (keyword, arguments)
    assert container_argv()[0] == "selserve", container_argv()


def test_containerfile_stops_with_sigterm():
    assert container_instruction("STOPSIGNAL") == "SIGTERM"


def test_containerfile_exposes_the_port_it_binds():
    port = bind_port(options(container_argv()))
    assert str(port) in container_instruction("EXPOSE").split(), port


def test_containerfile_healthcheck_asks_the_health_path():
    healthcheck = container_instruction("HEALTHCHECK")
    assert healthcheck is not None and healthcheck.upper() != "NONE", healthcheck
    flags = options(container_argv())
    url = f":{bind_port(flags)}{flags['--health-path']}"
    assert url in healthcheck, (url, healthcheck)


def test_containerfile_flags_are_selserve_flags(selserve_flags):
    unknown = set(options(container_argv())) - selserve_flags
    assert not unknown, f"not flags of `selserve --help`: {sorted(unknown)}"


# -- Kubernetes


@pytest.fixture(scope="module")
def manifests() -> list[dict]:
    return [doc for doc in yaml.safe_load_all(KUBERNETES.read_text()) if doc is not None]


def only(manifests: list[dict], kind: str) -> dict:
    found = [doc for doc in manifests if doc.get("kind") == kind]
    assert len(found) == 1, f"{len(found)} {kind} documents in {KUBERNETES.name}"
    return found[0]


def pod_spec(manifests: list[dict]) -> dict:
    return only(manifests, "Deployment")["spec"]["template"]["spec"]


def selserve_container(manifests: list[dict]) -> dict:
    containers = pod_spec(manifests)["containers"]
    assert len(containers) == 1, [container["name"] for container in containers]
    return containers[0]


def container_flags(manifests: list[dict]) -> dict[str, str]:
    container = selserve_container(manifests)
    return options(container.get("command", []) + container.get("args", []))


def port_number(port: int | str, container: dict) -> int:
    """A probe's or a Service's port, given as a number or as a container port's name."""
    if isinstance(port, int):
        return port
    named = {entry.get("name"): entry["containerPort"] for entry in container["ports"]}
    assert port in named, f"no container port named {port!r}: {named}"
    return named[port]


def test_kubernetes_manifest_holds_a_deployment_and_a_service(manifests):
    kinds = sorted(doc.get("kind") for doc in manifests)
    assert kinds == ["Deployment", "Service"], kinds


@pytest.mark.parametrize("probe", ["readinessProbe", "livenessProbe"])
def test_kubernetes_probe_asks_the_health_path_on_the_bound_port(manifests, probe):
    container = selserve_container(manifests)
    flags = container_flags(manifests)
    check = container[probe]["httpGet"]
    asked = (check["path"], port_number(check["port"], container))
    assert asked == (flags["--health-path"], bind_port(flags)), (asked, flags)


def test_kubernetes_grace_period_outlasts_drain_delay_and_shutdown_timeout(manifests):
    flags = container_flags(manifests)
    drain = float(flags["--drain-delay"])
    shutdown = float(flags.get("--shutdown-timeout", Config().shutdown_timeout))
    grace = pod_spec(manifests).get("terminationGracePeriodSeconds", 30)  # (Kubernetes' default)
    assert grace > drain + shutdown, (grace, drain, shutdown)


def test_kubernetes_container_port_is_the_bound_port(manifests):
    container = selserve_container(manifests)
    ports = [entry["containerPort"] for entry in container["ports"]]
    assert ports == [bind_port(container_flags(manifests))], ports


def test_kubernetes_deployment_selects_its_own_pods(manifests):
    deployment = only(manifests, "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= labels.items(), (selector, labels)


def test_kubernetes_service_selects_the_pods(manifests):
    labels = only(manifests, "Deployment")["spec"]["template"]["metadata"]["labels"]
    selector = only(manifests, "Service")["spec"]["selector"]
    assert selector and selector.items() <= labels.items(), (selector, labels)


def test_kubernetes_service_targets_the_container_port(manifests):
    container = selserve_container(manifests)
    targets = [
        port_number(entry.get("targetPort", entry["port"]), container)
        for entry in only(manifests, "Service")["spec"]["ports"]
    ]
    assert targets == [entry["containerPort"] for entry in container["ports"]], targets


def test_kubernetes_flags_are_selserve_flags(manifests, selserve_flags):
    unknown = set(container_flags(manifests)) - selserve_flags
    assert not unknown, f"not flags of `selserve --help`: {sorted(unknown)}"


# -- HAProxy


def haproxy_check_path(name: str) -> str:
    match = re.search(r"^\s*option httpchk GET (\S+)", (DEPLOY / name).read_text(), re.M)
    assert match, f"no `option httpchk GET PATH` in {name}"
    return match.group(1)


HAPROXY_CONFIGS = ["haproxy.cfg", "haproxy-headers.cfg", "haproxy-tls.cfg"]


@needs_haproxy
@pytest.mark.parametrize("name", HAPROXY_CONFIGS)
def test_haproxy_accepts_config(name, tmp_path):
    # (haproxy-tls.cfg names the CA that signed the instances' certificates)
    env = {**os.environ, **PORTS, "APP_CA": str(make_certs(tmp_path).ca_cert)}
    result = run([HAPROXY, "-c", "-f", str(DEPLOY / name)], env=env)
    assert result.returncode == 0, shown(result)


@pytest.mark.parametrize("name", HAPROXY_CONFIGS)
def test_haproxy_config_takes_its_ports_from_the_environment(name):
    text = (DEPLOY / name).read_text()
    missing = [variable for variable in PORTS if f"${{{variable}}}" not in text]
    assert not missing, f"{name} does not use {missing}"


@pytest.mark.parametrize("name", HAPROXY_CONFIGS)
def test_haproxy_checks_the_containers_health_path(name):
    assert haproxy_check_path(name) == options(container_argv())["--health-path"]


@pytest.mark.parametrize("name", ["haproxy.cfg", "haproxy-tls.cfg"])
def test_haproxy_sends_proxy_protocol_v2_to_every_checked_server(name):
    text = (DEPLOY / name).read_text()
    servers = re.findall(r"^\s*server\s.*$", text, re.M)
    assert len(servers) == 2, servers
    bare = [line for line in servers if not {"send-proxy-v2", "check"} <= set(line.split())]
    assert not bare, bare


# -- nginx


def fill_nginx_template(name: str, run_dir: Path) -> Path:
    """A copy of deploy/NAME in `run_dir` with its @TOKEN@ placeholders filled in."""
    text = (DEPLOY / name).read_text()
    for variable, value in {**PORTS, "RUN_DIR": str(run_dir)}.items():
        text = text.replace(f"@{variable}@", value)
    left = NGINX_TOKEN.findall(text)
    assert not left, f"{name}: placeholders this test does not fill: {left}"
    path = run_dir / name
    path.write_text(text)
    return path


def nginx_stream_module() -> str | None:
    """What a configuration must say to have the stream module: "" when this nginx
    has it built in, a load_module line when it is an installed dynamic module, None
    when it has neither."""
    configure = run([NGINX, "-V"]).stderr  # (nginx -V writes to stderr)
    if re.search(r"--with-stream(\s|$)", configure):
        return ""
    if "--with-stream=dynamic" not in configure:
        return None
    modules = re.search(r"--modules-path=(\S+)", configure)
    prefix = re.search(r"--prefix=(\S+)", configure)
    if modules:
        directory = Path(modules.group(1))
    else:
        directory = Path(prefix.group(1) if prefix else "/usr/local/nginx") / "modules"
    module = directory / "ngx_stream_module.so"
    return f"load_module {module};" if module.exists() else None


def nginx_directives(name: str) -> str:
    """deploy/NAME without its comments."""
    return re.sub(r"#.*", "", (DEPLOY / name).read_text())


@needs_nginx
def test_nginx_accepts_http_config(tmp_path):
    result = run([NGINX, "-t", "-c", str(fill_nginx_template("nginx.conf", tmp_path))])
    assert result.returncode == 0, shown(result)


@needs_nginx
def test_nginx_accepts_proxy_protocol_config(tmp_path):
    module = nginx_stream_module()
    if module is None:
        pytest.skip(
            "nginx has no stream module, the only one that sends the PROXY protocol "
            "(Debian: libnginx-mod-stream, or nginx-full)"
        )
    (tmp_path / "modules.conf").write_text(module + "\n")
    conf = fill_nginx_template("nginx-proxy-protocol.conf", tmp_path)
    result = run([NGINX, "-t", "-c", str(conf)])
    assert result.returncode == 0, shown(result)


def test_nginx_forwards_client_address_scheme_and_host():
    text = nginx_directives("nginx.conf")
    for directive in (
        r"proxy_set_header\s+X-Forwarded-For\s+\$proxy_add_x_forwarded_for;",
        r"proxy_set_header\s+X-Forwarded-Proto\s+\$scheme;",
        r"proxy_set_header\s+Host\s+\$host;",
    ):
        assert re.search(directive, text), directive


def test_nginx_keeps_upstream_connections_alive():
    text = nginx_directives("nginx.conf")
    for directive in (
        r"proxy_http_version\s+1\.1;",
        r'proxy_set_header\s+Connection\s+"";',
        r"\bkeepalive\s+\d+;",
    ):
        assert re.search(directive, text), directive


def test_nginx_closes_idle_upstream_connections_before_selserve_does():
    match = re.search(r"\bkeepalive_timeout\s+(\d+)s;", nginx_directives("nginx.conf"))
    assert match, "no keepalive_timeout in the upstream block (nginx's default is 60 s)"
    assert int(match.group(1)) < Config().keepalive_timeout, match.group(0)
