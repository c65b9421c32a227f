"""The deployment manifests stay in step with the CLI and with each other."""

from __future__ import annotations

from pathlib import Path

import yaml

from speechadapt.client.cli import build_parser

K8S = Path(__file__).resolve().parents[1] / "deploy" / "k8s"


def _docs(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]


def _containers(doc: dict) -> list[dict]:
    return doc["spec"]["template"]["spec"]["containers"]


def test_server_args_parse_and_jobs_have_one_writer():
    deployments = {d["metadata"]["name"]: d for d in _docs("server.yaml") if d["kind"] == "Deployment"}
    parser = build_parser()
    for d in deployments.values():
        for c in _containers(d):
            args = parser.parse_args(c["args"])  # every flag exists and every value parses
            assert args.command == "serve" and args.state_dir == "/state"
            # Kubernetes kills the pod after its grace period: the drain must end well before
            assert d["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= args.drain_seconds + 15
    jobs = deployments["speechadapt-jobs"]
    assert jobs["spec"]["replicas"] == 1 and jobs["spec"]["strategy"]["type"] == "Recreate"
    assert "--ray-address" in _containers(jobs)[0]["args"]
    mounts = {m["name"]: m for m in _containers(deployments["speechadapt-server"])[0]["volumeMounts"]}
    assert mounts["state"].get("readOnly") is True  # recognition replicas never write the job database


def test_ray_pods_mount_the_server_paths():
    (cluster,) = _docs("raycluster.yaml")
    groups = [cluster["spec"]["headGroupSpec"], *cluster["spec"]["workerGroupSpecs"]]
    for g in groups:
        (c,) = g["template"]["spec"]["containers"]
        assert {m["mountPath"] for m in c["volumeMounts"]} >= {"/models", "/state"}
    jobs = next(d for d in _docs("server.yaml") if d["metadata"]["name"] == "speechadapt-jobs")
    address = _containers(jobs)[0]["args"][_containers(jobs)[0]["args"].index("--ray-address") + 1]
    assert address == f"http://{cluster['metadata']['name']}-head-svc:8265"


def test_server_pods_expose_their_metrics_for_scraping():
    docs = _docs("server.yaml")
    parser = build_parser()
    deployments = [d for d in docs if d["kind"] == "Deployment"]
    assert {d["metadata"]["name"] for d in deployments} == {"speechadapt-jobs", "speechadapt-server"}
    for d in deployments:
        (c,) = _containers(d)
        args = parser.parse_args(c["args"])
        assert args.metrics_port, f"{d['metadata']['name']} serves no metrics"
        assert (args.metrics_host or args.host) == "0.0.0.0"  # reachable from the scraper, not loopback only
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        assert ports["metrics"] == args.metrics_port and ports["grpc"] == args.port != args.metrics_port
        notes = d["spec"]["template"]["metadata"]["annotations"]
        assert notes["prometheus.io/scrape"] == "true" and notes["prometheus.io/port"] == str(args.metrics_port)
        assert notes["prometheus.io/path"] == "/metrics"
    # the ServiceMonitor reaches every server pod through a Service port named as it says
    (monitor,) = _docs("servicemonitor.yaml")
    services = [d for d in docs if d["kind"] == "Service"
                and monitor["spec"]["selector"]["matchLabels"].items() <= d["metadata"].get("labels", {}).items()]
    assert [s["metadata"]["name"] for s in services] == ["speechadapt"]
    (service,) = services
    assert service["spec"]["selector"] == {"app": "speechadapt-server"}  # both Deployments' pods
    (endpoint,) = monitor["spec"]["endpoints"]
    port = next(p for p in service["spec"]["ports"] if p["name"] == endpoint["port"])
    assert port["targetPort"] == "metrics" and endpoint["path"] == "/metrics"
