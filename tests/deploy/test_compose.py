"""deploy/compose.yaml without Docker: every mounted path exists, every port and scrape target names a
service that listens there, Grafana's datasource reaches the compose Prometheus, and the image has what
the server and the watcher import. With Docker Compose installed, `config -q` validates the file too."""

import ast
import json
import re
import shutil
import subprocess
import sys
import tomllib
import urllib.parse
from pathlib import Path, PurePosixPath

import pytest
import yaml

from dashboards.build import DATASOURCE_UID

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
DOCKERFILE = DEPLOY / "Dockerfile"
LOOPBACK = "127.0.0.1"
# mounted paths that are not in git: what makes them (the compose file says so too)
GENERATED = {"runs": "make demo"}
GRAFANA_PROVISIONING = PurePosixPath("/etc/grafana/provisioning")


def _compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _flags(command: list[str]) -> dict[str, str]:
    """--name=value and --name value pairs of a command line."""
    out = {}
    for i, arg in enumerate(command):
        if arg.startswith("--"):
            name, eq, value = arg[2:].partition("=")
            if not eq and i + 1 < len(command) and not command[i + 1].startswith("--"):
                value = command[i + 1]
            out[name] = value
    return out


def listen_port(service: dict) -> int:
    """The port a service's process listens on inside its container."""
    image, flags = service.get("image", ""), _flags(service.get("command", []))
    if image.startswith("prom/prometheus:"):
        return int(flags.get("web.listen-address", ":9090").rpartition(":")[2])
    if image.startswith("grafana/"):
        return int(service.get("environment", {}).get("GF_SERVER_HTTP_PORT", 3000))
    return int(flags["port"])


def bind_mounts(service: dict) -> list[dict]:
    """{source, target, read_only, create} for each bind mount, short or long syntax (named volumes skipped)."""
    out = []
    for v in service.get("volumes", []):
        if isinstance(v, str):
            source, target, *mode = v.split(":")
            if not source.startswith((".", "/")):
                continue  # a named volume
            out.append({"source": source, "target": target, "read_only": "ro" in mode, "create": True})
        elif v.get("type") == "bind":
            out.append({"source": v["source"], "target": v["target"], "read_only": bool(v.get("read_only")),
                        "create": v.get("bind", {}).get("create_host_path", False)})
    return out


def _host(path: str) -> Path:
    return (DEPLOY / path).resolve()


def _mount_of(service: dict, target: PurePosixPath) -> dict | None:
    """The bind mount a container path lies in (the deepest one)."""
    found = [m for m in bind_mounts(service) if target == PurePosixPath(m["target"])
             or PurePosixPath(m["target"]) in target.parents]
    return max(found, key=lambda m: len(m["target"]), default=None)


def _in_container(service: dict, path: str) -> Path | None:
    """The host file behind a container path of a service, or None where no mount holds it."""
    mount = _mount_of(service, PurePosixPath(path))
    if mount is None:
        return None
    return _host(mount["source"]) / PurePosixPath(path).relative_to(mount["target"])


def _url_target(url: str, services: dict) -> str | None:
    """None when ``url`` names a compose service on the port it listens on, else what is wrong."""
    parts = urllib.parse.urlsplit(url if "//" in url else f"//{url}")
    if parts.hostname not in services:
        return f"{url}: {parts.hostname} is not a service ({', '.join(sorted(services))})"
    if parts.port != listen_port(services[parts.hostname]):
        return f"{url}: {parts.hostname} listens on {listen_port(services[parts.hostname])}"
    return None


# --- the checks, as functions of the parsed file (so a test can show each one fails on a broken file) ---

def mount_problems(compose: dict) -> list[str]:
    problems = []
    for name, service in compose["services"].items():
        for m in bind_mounts(service):
            path = _host(m["source"])
            if REPO not in path.parents:
                problems.append(f"{name}: {m['source']} lies outside the repository")
                continue
            top = path.relative_to(REPO).parts[0]
            if top in GENERATED:
                if m["create"]:  # docker would create an empty root-owned folder and serve nothing
                    problems.append(f"{name}: {m['source']} ({GENERATED[top]} makes it) needs the long syntax "
                                    "with bind.create_host_path: false")
            elif not path.exists():
                problems.append(f"{name}: {m['source']} does not exist ({path})")
            if not m["read_only"]:
                problems.append(f"{name}: {m['source']} is mounted read-write")
    return problems


def port_problems(compose: dict) -> list[str]:
    problems = []
    for name, service in compose["services"].items():
        for p in service.get("ports", []):
            if isinstance(p, dict):
                host_ip, target = p.get("host_ip"), int(p["target"])
            else:
                m = re.fullmatch(r"(?:(\d+\.\d+\.\d+\.\d+):)?(?:(\$\{[^}]*\}|\d+):)?(\d+)(?:/tcp)?", str(p))
                if not m:
                    problems.append(f"{name}: cannot read the port {p!r}")
                    continue
                host_ip, target = m[1], int(m[3])
            if host_ip != LOOPBACK:
                problems.append(f"{name}: {p!r} is published on {host_ip or 'every interface'}, not {LOOPBACK}")
            if target != listen_port(service):
                problems.append(f"{name}: {p!r} publishes {target}, the process listens on {listen_port(service)}")
    return problems


def scrape_problems(compose: dict) -> list[str]:
    services = compose["services"]
    prometheus = services["prometheus"]
    config_path = _in_container(prometheus, _flags(prometheus["command"])["config.file"])
    if config_path is None or not config_path.is_file():
        return [f"Prometheus' --config.file is not a mounted file of the repo ({config_path})"]
    config = yaml.safe_load(config_path.read_text())
    template = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    problems = []
    jobs = [j["job_name"] for j in config["scrape_configs"]]
    if jobs != [j["job_name"] for j in template["scrape_configs"]]:
        problems.append(f"jobs {jobs} are not deploy/prometheus.yml's (the names the dashboards query)")
    for job in config["scrape_configs"]:
        targets = [t for sc in job.get("static_configs", []) for t in sc["targets"]]
        if not targets:
            problems.append(f"{job['job_name']}: no target")
        problems += [f"{job['job_name']}: {p}" for t in targets if (p := _url_target(t, services))]
    return problems


def service_problems(compose: dict) -> list[str]:
    """The server and watcher listen beyond their container's loopback and find what they read."""
    services, problems = compose["services"], []
    for name in ("serve", "watch"):
        if _flags(services[name]["command"]).get("host") != "0.0.0.0":
            problems.append(f"{name}: --host must be 0.0.0.0 (loopback is unreachable from Prometheus' container)")
    problem = _url_target(_flags(services["watch"]["command"]).get("prometheus", ""), services)
    if problem:
        problems.append(f"watch --prometheus: {problem}")
    workdir = re.findall(r"^WORKDIR\s+(\S+)", DOCKERFILE.read_text(), flags=re.M)[-1]
    sweep = PurePosixPath(workdir) / _flags(services["serve"]["command"])["sweep"]
    if _mount_of(services["serve"], sweep) is None:
        problems.append(f"serve: the sweep {sweep} is in no mount")
    health = " ".join(services["serve"]["healthcheck"]["test"])
    if f":{listen_port(services['serve'])}/" not in health:
        problems.append(f"serve: the healthcheck ({health}) asks another port")
    return problems


# --- tests ---

def test_the_file_has_the_four_services_and_no_version_key():
    compose = _compose()
    assert "version" not in compose
    assert set(compose["services"]) == {"prometheus", "grafana", "serve", "watch"}
    for name in ("prometheus", "grafana"):
        image = compose["services"][name]["image"]
        assert re.fullmatch(r"[\w./-]+:v?\d+\.\d+\.\d+", image), f"{name}: {image} is not pinned to a release"
    assert compose["services"]["prometheus"]["image"].startswith("prom/prometheus:")
    assert compose["services"]["grafana"]["image"].startswith("grafana/grafana-oss:")


def test_every_bind_mount_exists_and_is_read_only():
    assert mount_problems(_compose()) == []


def test_what_is_mounted_but_generated_is_made_by_that_make_target():
    ignored = (REPO / ".gitignore").read_text().split()
    makefile = (REPO / "Makefile").read_text()
    for top, target in GENERATED.items():
        assert f"{top}/" in ignored, f"{top}/ is generated, so git ignores it"
        recipe = re.search(rf"^{target.split()[-1]}:.*\n((?:\t.*\n)+)", makefile, flags=re.M)
        assert recipe and f"{top}/" in recipe[1], f"`{target}` writes {top}/"
        assert target in COMPOSE.read_text(), f"the compose file says that `{target}` comes first"


def test_published_ports_are_loopback_and_the_ones_listened_on():
    assert port_problems(_compose()) == []


def test_scrape_targets_are_services_on_the_ports_they_listen_on_with_the_template_jobs():
    assert scrape_problems(_compose()) == []


def test_server_and_watcher_listen_for_other_containers_and_find_their_inputs():
    assert service_problems(_compose()) == []


def test_grafana_datasource_is_the_repos_with_the_compose_prometheus():
    compose = _compose()
    grafana, services = compose["services"]["grafana"], compose["services"]
    mounted = [_host(m["source"]) for m in bind_mounts(grafana)
               if GRAFANA_PROVISIONING / "datasources" in PurePosixPath(m["target"]).parents]
    assert len(mounted) == 1, mounted
    ours = yaml.safe_load(mounted[0].read_text())["datasources"]
    repo = yaml.safe_load((REPO / "dashboards/provisioning/datasources/fracture.yaml").read_text())["datasources"]
    assert len(ours) == len(repo) == 1
    assert _url_target(ours[0]["url"], services) is None, _url_target(ours[0]["url"], services)
    assert urllib.parse.urlsplit(ours[0]["url"]).hostname == "prometheus"
    assert {k: v for k, v in ours[0].items() if k != "url"} == {k: v for k, v in repo[0].items() if k != "url"}
    assert ours[0]["uid"] == DATASOURCE_UID, "every dashboard query names this uid"


def test_grafana_loads_the_repos_dashboards_through_the_repos_provider():
    grafana = _compose()["services"]["grafana"]
    providers = [m for m in bind_mounts(grafana)
                 if GRAFANA_PROVISIONING / "dashboards" in PurePosixPath(m["target"]).parents]
    assert [_host(m["source"]) for m in providers] == [REPO / "dashboards/provisioning/dashboards/fracture.yaml"]
    provider = yaml.safe_load(_host(providers[0]["source"]).read_text())["providers"][0]
    json_dir = _in_container(grafana, provider["options"]["path"])
    assert json_dir == REPO / "dashboards/json", f"the provider's path {provider['options']['path']} -> {json_dir}"
    assert sorted(json_dir.glob("*.json")), "no dashboards to load"
    home = _in_container(grafana, grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"])
    assert home is not None and home.is_file(), home
    env = grafana["environment"]
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "true" and env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    assert env["GF_SECURITY_ADMIN_PASSWORD"].startswith("${GRAFANA_ADMIN_PASSWORD:-"), "from the environment"


def test_the_checks_fail_on_a_broken_file():
    """Each check above finds the mistake it exists for."""
    def broken(edit) -> dict:
        compose = _compose()
        edit(compose["services"])
        return compose

    def rename_json(s):
        s["grafana"]["volumes"][1] = s["grafana"]["volumes"][1].replace("dashboards/json", "dashboards/jsn")
    assert any("does not exist" in p for p in mount_problems(broken(rename_json)))

    def runs_short_syntax(s):
        s["serve"]["volumes"] = ["../runs:/app/runs:ro"]
    assert any("create_host_path" in p for p in mount_problems(broken(runs_short_syntax)))

    def writable(s):
        s["prometheus"]["volumes"][0] = s["prometheus"]["volumes"][0].removesuffix(":ro")
    assert any("read-write" in p for p in mount_problems(broken(writable)))

    def every_interface(s):
        s["grafana"]["ports"] = ["3000:3000"]
    assert any("every interface" in p for p in port_problems(broken(every_interface)))

    def other_port(s):
        s["watch"]["command"] = [a.replace("--port=9108", "--port=9109") for a in s["watch"]["command"]]
    assert any("listens on 9109" in p for p in scrape_problems(broken(other_port)))
    assert any("publishes 9108" in p for p in port_problems(broken(other_port)))

    def loopback(s):
        s["serve"]["command"] = [a.replace("--host=0.0.0.0", "--host=127.0.0.1") for a in s["serve"]["command"]]
    assert any("--host" in p for p in service_problems(broken(loopback)))

    def unknown_host(s):
        s["watch"]["command"] = [a.replace("//prometheus:", "//prom:") for a in s["watch"]["command"]]
    assert any("prom is not a service" in p for p in service_problems(broken(unknown_host)))

    def other_job(s):
        s["prometheus"]["command"] = [a.replace("/etc/prometheus/prometheus.yml", "/etc/prometheus/other.yml")
                                      for a in s["prometheus"]["command"]]
    assert any("not a mounted file" in p for p in scrape_problems(broken(other_job)))


# --- the image ---

def _dockerfile_pip_args() -> list[str]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    args = []
    for line in re.findall(r"^RUN\s+(.*)$", text, flags=re.M):
        for cmd in line.split("&&"):
            words = cmd.split()
            if words[:2] == ["pip", "install"]:
                args += words[2:]
    return args


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def image_pins() -> dict[str, str]:
    """{package: version} the Dockerfile installs (-r files read)."""
    args, pins = _dockerfile_pip_args(), {}
    for i, a in enumerate(args):
        if a == "-r":
            for line in (REPO / args[i + 1]).read_text().splitlines():
                line = line.split("#")[0].strip()
                if line:
                    name, _, version = line.partition("==")
                    pins[_canonical(name)] = version
        elif "==" in a:
            name, _, version = a.partition("==")
            pins[_canonical(name)] = version
    return pins


def test_the_image_pins_what_pyproject_pins_and_has_no_torch():
    """No torch: the server and the watcher never import it (the test below); what the image does install
    carries pyproject.toml's pins, and fracture itself goes in without dependencies."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = {_canonical(n): v for n, v in (d.split("==") for d in project["dependencies"])}
    image = image_pins()
    assert image, "the Dockerfile installs nothing?"
    assert not {"torch", "transformers", "optimum", "accelerate"} & set(image)
    assert {n: v for n, v in image.items() if pins.get(n) != v} == {}, "pins differ from pyproject.toml"
    args = _dockerfile_pip_args()
    assert "--no-deps" in args and ("." in args or "-e" in args), "fracture itself, without its dependencies"
    assert re.search(r"^FROM python:3\.12-slim$", DOCKERFILE.read_text(), flags=re.M)


ENTRY_MODULES = ("serve.__main__", "serve.app", "serve.http", "telemetry.__main__", "telemetry.watch")
# imported by a module the two processes load, but only in a function neither process calls
NOT_ON_THEIR_PATHS = {"matplotlib": "telemetry/report.py draws the HTML report of `telemetry analyze`"}


def _third_party_imports(path: Path, project: set[str]) -> set[str]:
    """Top-level names of the non-project, non-stdlib modules a file imports, at any depth (lazy imports too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else []
        found |= {n.split(".")[0] for n in names}
    return found - set(sys.stdlib_module_names) - project


def test_the_image_has_everything_the_server_and_watcher_import():
    """Every third-party module that the project code behind `python -m serve` and `python -m telemetry watch`
    imports (at the top or inside a function) comes from a package the image installs or one of its
    dependencies; torch and transformers are never loaded."""
    from importlib.metadata import PackageNotFoundError, packages_distributions, requires

    from packaging.requirements import Requirement

    code = ("import importlib, json, sys; [importlib.import_module(m) for m in sys.argv[1:]]; "
            "print(json.dumps({n: getattr(m, '__file__', None) for n, m in sys.modules.items()}))")
    res = subprocess.run([sys.executable, "-c", code, *ENTRY_MODULES], cwd=REPO, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    loaded = json.loads(res.stdout.splitlines()[-1])
    assert not {"torch", "transformers"} & {n.split(".")[0] for n in loaded}
    project = {p.parent.name for p in REPO.glob("*/__init__.py")}
    imported = {}
    for name, file in loaded.items():
        if name.split(".")[0] in project and file:
            for module in _third_party_imports(Path(file), project):
                imported.setdefault(module, []).append(name)
    assert {"onnxruntime", "uvicorn", "scipy", "prometheus_api_client"} <= set(imported), sorted(imported)

    closure, todo = set(), list(image_pins())
    while todo:
        name = todo.pop()
        if name in closure:
            continue
        closure.add(name)
        try:
            reqs = requires(name) or []
        except PackageNotFoundError:
            continue
        for r in map(Requirement, reqs):
            if r.marker is None or r.marker.evaluate({"extra": ""}):
                todo.append(_canonical(r.name))
    dists = packages_distributions()
    missing = {m: by for m, by in imported.items() if m not in NOT_ON_THEIR_PATHS
               and not {_canonical(d) for d in dists.get(m, [m])} & closure}
    assert missing == {}, "imported by (module: importers) but not installed in the image, nor a dependency"


def test_the_image_copies_every_package_and_the_context_sends_it():
    text = DOCKERFILE.read_text()
    copied = {src for line in re.findall(r"^COPY\s+(.+)$", text, flags=re.M) for src in line.split()[:-1]}
    packages = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    assert {p.rstrip("*") for p in packages["include"]} <= copied
    ignore = [line.strip() for line in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    assert ignore[0] == "*", "an allow-list: runs/ alone is gigabytes"
    for src in copied:
        assert (REPO / src).exists(), f"COPY {src}: not in the repository"
        assert f"!{src}" in ignore, f"COPY {src}: Dockerfile.dockerignore keeps it out of the build context"
    build = _compose()["services"]["serve"]["build"]
    assert _host(build["context"]) == REPO and (REPO / build["dockerfile"]) == DOCKERFILE


# --- the real tools, where installed ---

def _compose_cli() -> list[str] | None:
    if shutil.which("docker"):
        res = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
        if res.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        res = subprocess.run(["docker-compose", "version"], capture_output=True, text=True)
        if res.returncode == 0 and re.search(r"v2\.", res.stdout):
            return ["docker-compose"]
    return None


def test_docker_compose_config_accepts_the_file():
    cli = _compose_cli()
    if cli is None:
        pytest.skip("Docker Compose v2 is not installed (neither `docker compose` nor a v2 `docker-compose`): "
                    "the file is checked by parsing only")
    res = subprocess.run([*cli, "-f", str(COMPOSE), "config", "-q"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr


def test_promtool_accepts_the_compose_prometheus_config():
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (it ships with Debian's prometheus package)")
    res = subprocess.run([promtool, "check", "config", str(DEPLOY / "prometheus-compose.yml")],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
