"""The deployment files (deploy/): every Kubernetes object validates against Kubernetes' own schemas
(kubernetes-validate, strict: unknown fields are errors), the InferencePool selects the Deployment's pods
on their port, the probes ask /ready and /health, every inhaus flag used is one `inhaus serve` takes,
and the systemd unit passes `systemd-analyze verify` (skipped, saying so, where systemd is absent)."""
import re
import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

import suite

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
K8S_VERSION = "1.33"


def docs(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((DEPLOY / "kubernetes" / name).read_text()) if d]


def serve_flags() -> set[str]:
    out = subprocess.run([suite.BIN, "serve", "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return set(re.findall(r"--[a-z][a-z0-9-]+", out.stdout))


def test_every_kubernetes_object_validates_against_kubernetes_schemas():
    objects = docs("inhaus.yaml")
    assert {o["kind"] for o in objects} == {"PersistentVolumeClaim", "Deployment", "Service"}
    for o in objects:
        kubernetes_validate.validate(o, K8S_VERSION, strict=True)


def test_a_broken_object_is_caught():
    deployment = next(o for o in docs("inhaus.yaml") if o["kind"] == "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGett"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


def test_the_deployment_probes_and_flags_fit_the_server():
    objects = {o["kind"]: o for o in docs("inhaus.yaml")}
    pod = objects["Deployment"]["spec"]["template"]
    c = pod["spec"]["containers"][0]
    assert c["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert c["livenessProbe"]["httpGet"]["path"] == "/health"
    assert c["args"][0] == "serve"
    flags = serve_flags()
    used = {a.split("=")[0] for a in c["args"][1:]}
    assert used <= flags, used - flags
    assert "--port=8080" in c["args"] and c["ports"][0]["containerPort"] == 8080
    assert objects["Service"]["spec"]["selector"] == pod["metadata"]["labels"]
    # The InferencePool routes between exactly these pods, on the server's port.
    (pool,) = docs("inferencepool.yaml")
    assert pool["apiVersion"] == "inference.networking.k8s.io/v1" and pool["kind"] == "InferencePool"
    assert pool["spec"]["selector"]["matchLabels"] == pod["metadata"]["labels"]
    assert pool["spec"]["targetPorts"] == [{"number": 8080}]
    assert pool["spec"]["endpointPickerRef"]["name"]


def test_the_systemd_unit_verifies(tmp_path):
    unit = (DEPLOY / "systemd" / "inhaus.service").read_text()
    exec_start = re.search(r"^ExecStart=(\S+) (.*)$", unit, re.M)
    assert exec_start and exec_start.group(2).startswith("serve ")
    assert set(re.findall(r"--[a-z][a-z0-9-]+", exec_start.group(2))) <= serve_flags()
    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze is not installed")
    # The binary just built stands in for /usr/local/bin/inhaus.
    f = tmp_path / "inhaus.service"
    f.write_text(unit.replace(exec_start.group(1), suite.BIN))
    r = subprocess.run(["systemd-analyze", "verify", str(f)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and not r.stderr.strip(), r.stderr
