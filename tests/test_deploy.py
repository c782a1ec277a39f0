"""deploy/: the Dockerfile, .dockerignore and Kubernetes manifests agree with each other, with the
service they run (its routes, its command line, how long it takes to stop) and with the README's
install command.

No image is built and no cluster is asked (no Docker engine and no API server here): the files
are parsed (PyYAML, a small Dockerfile reader) and checked against the real app and parser. kubectl
renders the kustomization offline; its client dry run needs an API server and is skipped without one.
"""
import asyncio
import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
from configparser import ConfigParser
from pathlib import Path

import pytest
import yaml

from conftest import ROOT
from tfllm.serve import Service, Settings
from tfllm.serve.__main__ import build_parser, settings_of
from tfllm.serve.app import create_app
from tfllm.serve.config import check_workers
from tfllm.serve.server import GRACE_S, STOP_GRACE_S

K8S = ROOT / "deploy" / "k8s"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
MANIFESTS = ("deployment.yaml", "service.yaml", "hpa.yaml")


# --- readers -----------------------------------------------------------------------------------
def manifest(name: str) -> dict:
    (document,) = [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]
    return document


def container() -> dict:
    (only,) = manifest("deployment.yaml")["spec"]["template"]["spec"]["containers"]
    return only


def dockerfile() -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` of the Dockerfile, continuation lines joined, comments dropped."""
    lines, current = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        current += line.rstrip().removesuffix("\\") + " "
        if not line.rstrip().endswith("\\"):
            lines.append(current.strip())
            current = ""
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def instruction(name: str) -> list[str]:
    return [args for kind, args in dockerfile() if kind == name]


def exec_form(name: str) -> list[str]:
    """ENTRYPOINT / CMD in exec form (a JSON list: the process gets SIGTERM itself, not a shell)."""
    (args,) = instruction(name)
    return json.loads(args)


def served_args() -> list[str]:
    """The command line the container runs: the image's ENTRYPOINT after ``python -m
    tfllm.serve``, then the Deployment's args (which replace the image's CMD)."""
    entrypoint = exec_form("ENTRYPOINT")
    assert entrypoint[:3] == ["python", "-m", "tfllm.serve"], entrypoint
    return entrypoint[3:] + container()["args"]


def flag(args: list[str], name: str, default=None):
    return args[args.index(name) + 1] if name in args else default


def pip_installs(command: str) -> list[tuple[str, frozenset]]:
    """``(requirement, flags)`` of each ``pip install`` in a shell command (``-q`` left out; the
    project itself, ``.`` or ``-e .[extras]``, as ``PROJECT[extras]``)."""
    installs = []
    for part in re.split(r"&&|;", command):
        words = shlex.split(part)
        if words[:2] != ["pip", "install"] and words[1:3] != ["-m", "pip"]:
            continue
        words = words[words.index("install") + 1:]
        flags = set()
        for word in words:
            if word.startswith("-"):
                flags |= {word} - {"-q"}
            else:
                installs.append((re.sub(r"^\.", "PROJECT", word), frozenset(flags)))
                flags = set()
    return installs


def readme_install_command() -> str:
    (line,) = [line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith("python3.11 -m venv")]
    return line


def get(path: str) -> tuple[int, dict]:
    """GET ``path`` from the real app (no models; its lifespan not run): the status and JSON body."""
    app = create_app(Service([], Settings()))
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "", "headers": [],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 8501)}
    asyncio.run(app(scope, receive, send))
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, json.loads(body) if body.startswith(b"{") else {}


def port_number(port, ports: list[dict]) -> int:
    """A probe's or Service's port: a number, or the name of one of the container's ports."""
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in ports if p.get("name") == port]
    return number


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore's ``patterns`` leave ``path`` (relative to the context) out: a
    pattern matches the path or a directory above it (the last matching pattern wins, ``!``
    takes back)."""
    parts = path.split("/")
    candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    ignored = False
    for pattern in patterns:
        keep = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        if any(fnmatch.fnmatchcase(c, pattern) or fnmatch.fnmatchcase(c, pattern.removeprefix("**/"))
               for c in candidates):
            ignored = not keep
    return ignored


# --- Kubernetes --------------------------------------------------------------------------------
def test_manifests_refer_to_each_other():
    deployment, service, hpa = (manifest(name) for name in MANIFESTS)
    assert (deployment["kind"], service["kind"], hpa["kind"]) == ("Deployment", "Service", "HorizontalPodAutoscaler")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == (
        deployment["apiVersion"], "Deployment", deployment["metadata"]["name"])
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["minReplicas"] <= deployment["spec"]["replicas"] <= hpa["spec"]["maxReplicas"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Resource" and metric["resource"]["name"] == "cpu"
    resources = container()["resources"]  # CPU utilisation is a share of the request: it must be set
    assert resources["requests"]["cpu"] == resources["limits"]["cpu"] == "2"
    env = {e["name"]: e["value"] for e in container()["env"]}  # each worker's share of the CPUs
    assert int(env["TF_NUM_INTRAOP_THREADS"]) * int(flag(served_args(), "--workers", 1)) == 2
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(MANIFESTS)
    assert sorted(p.name for p in K8S.glob("*.yaml")) == sorted([*MANIFESTS, "kustomization.yaml"])


def test_probes_and_the_scrape_path_are_routes_the_app_serves():
    assert get("/no-such-route")[0] == 404  # the check below can fail
    c = container()
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"  # not ready while loading or stopping
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"  # alive: answers at all
    annotations = manifest("deployment.yaml")["spec"]["template"]["metadata"]["annotations"]
    (healthcheck,) = instruction("HEALTHCHECK")
    paths = {c[probe]["httpGet"]["path"] for probe in ("readinessProbe", "livenessProbe", "startupProbe")}
    paths |= {annotations["prometheus.io/path"], re.search(r"http://[^/]+(/\w+)", healthcheck)[1]}
    for path in paths:
        status, body = get(path)
        assert status == 200 or (path == "/readyz" and status == 503 and body["status"] == "loading"), (path, status)


def test_one_port_everywhere():
    """The ENTRYPOINT's --port = EXPOSE = the container's port = the Service's targetPort = the
    probes' and the health check's port = the scrape annotation."""
    port = int(flag(served_args(), "--port"))
    assert instruction("EXPOSE") == [str(port)]
    ports = container()["ports"]
    assert [p["containerPort"] for p in ports] == [port]
    c = container()
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert port_number(c[probe]["httpGet"]["port"], ports) == port, probe
    (service_port,) = manifest("service.yaml")["spec"]["ports"]
    assert port_number(service_port["targetPort"], ports) == port
    annotations = manifest("deployment.yaml")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true" and int(annotations["prometheus.io/port"]) == port
    (healthcheck,) = instruction("HEALTHCHECK")
    assert re.search(r"http://[\d.]+:(\d+)/", healthcheck)[1] == str(port)
    assert flag(served_args(), "--host") == "0.0.0.0"


def test_the_container_runs_a_valid_command_line():
    """The image's ENTRYPOINT + the Deployment's args (and + the image's default CMD) parse with
    the real parser and pass its checks; the run directory served is the volume mounted."""
    for args in (served_args(), exec_form("ENTRYPOINT")[3:] + exec_form("CMD")):
        parsed = build_parser().parse_args(args)
        settings_of(parsed)
        check_workers(parsed.workers)
    parsed = build_parser().parse_args(served_args())
    mounts = [m["mountPath"] for m in container()["volumeMounts"]]
    assert parsed.run_dir in mounts, (parsed.run_dir, mounts)
    assert exec_form("CMD")[0].startswith("/models/")


def test_the_grace_period_covers_a_graceful_stop():
    """Kubernetes kills the pod terminationGracePeriodSeconds after preStop starts: that must
    cover preStop, --timeout-ms for the requests in flight, and the server's own margin (with
    --workers, the parent's wait for its workers)."""
    args = served_args()
    timeout_s = float(flag(args, "--timeout-ms", Settings().timeout_ms)) / 1000
    margin = STOP_GRACE_S if int(flag(args, "--workers", 1)) > 1 else GRACE_S
    pre_stop = container()["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    grace = manifest("deployment.yaml")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > float(pre_stop[1]) + timeout_s + margin


# --- the image ---------------------------------------------------------------------------------
def test_the_image_installs_what_the_readme_installs():
    """Every package the README's install command adds besides the project is installed the same
    way (pin, --no-deps); the project itself too (not editable; the dev extras may go); the
    files its setup.cfg reads are copied in; the base image's Python is the README's."""
    readme = dict(pip_installs(readme_install_command()))
    image = dict(install for run in instruction("RUN") for install in pip_installs(run))
    assert {k: v for k, v in image.items() if not k.startswith("PROJECT")} == \
        {k: v for k, v in readme.items() if not k.startswith("PROJECT")}
    (project,) = [k for k in image if k.startswith("PROJECT")]
    assert "-e" not in image[project] and any(k.startswith("PROJECT") for k in readme)
    copied = {word.rstrip("/") for args in instruction("COPY") for word in args.split()[:-1]}
    setup = ConfigParser()
    setup.read(ROOT / "setup.cfg")
    read_by_setup = {value.split("file:", 1)[1].strip() for section in setup.values() for value in section.values()
                     if value.strip().startswith("file:")}
    assert {"pyproject.toml", "setup.cfg", "tfllm"} | read_by_setup <= copied
    (base,) = instruction("FROM")
    assert base.startswith("python:3.11") and readme_install_command().startswith("python3.11 ")


def test_the_image_runs_as_the_user_the_pod_requires():
    (user,) = instruction("USER")
    uid, gid = (int(n) for n in user.split(":"))
    assert uid != 0
    pod = manifest("deployment.yaml")["spec"]["template"]["spec"]["securityContext"]
    assert pod["runAsNonRoot"] and (pod["runAsUser"], pod["runAsGroup"]) == (uid, gid)


def test_dockerignore_keeps_runs_out_and_the_build_inputs_in():
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    for path in ("runs/sst2/model/saved_model.pb", ".venv/bin/python", ".git/HEAD", "tfllm/__pycache__/x.pyc"):
        assert dockerignored(path, patterns), path
    copied = [word.rstrip("/") for args in instruction("COPY") for word in args.split()[:-1]]
    tracked = subprocess.run(["git", "ls-files", *copied], cwd=ROOT, capture_output=True, text=True, check=True)
    files = tracked.stdout.split()
    assert len(files) > 10 and "tfllm/serve/server.py" in files
    assert [f for f in files if dockerignored(f, patterns)] == []


# --- kubectl -----------------------------------------------------------------------------------
def kubectl(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """kubectl with an empty kubeconfig: nothing but this machine is ever asked."""
    (tmp_path / "kubeconfig").write_text("")
    env = {**os.environ, "KUBECONFIG": str(tmp_path / "kubeconfig")}
    return subprocess.run(["kubectl", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
                          check=False)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not on PATH")
def test_kubectl_renders_the_kustomization(tmp_path):
    rendered = kubectl(tmp_path, "kustomize", str(K8S))
    assert rendered.returncode == 0, rendered.stderr
    kinds = sorted(d["kind"] for d in yaml.safe_load_all(rendered.stdout) if d)
    assert kinds == ["Deployment", "HorizontalPodAutoscaler", "Service"]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not on PATH")
def test_kubectl_client_dry_run(tmp_path):
    files = [arg for name in MANIFESTS for arg in ("-f", str(K8S / name))]
    dry_run = kubectl(tmp_path, "create", "--dry-run=client", "--validate=false", "-o", "yaml",
                      "--request-timeout=5s", *files)
    if dry_run.returncode != 0 and re.search(r"unable to recognize|connection refused|server API group list",
                                             dry_run.stderr):
        pytest.skip("kubectl's client dry run still asks an API server which resource types exist "
                    "(discovery), and there is none here: " + dry_run.stderr.strip().splitlines()[-1])
    assert dry_run.returncode == 0, dry_run.stderr
    assert sorted(d["kind"] for d in yaml.safe_load_all(dry_run.stdout) if d) == \
        ["Deployment", "HorizontalPodAutoscaler", "Service"]
