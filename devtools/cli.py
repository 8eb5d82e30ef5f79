"""``python -m devtools``: the service on this machine (local PostgreSQL/Redis, the model, a
local Ray), the monitoring helper, the model and KubeRay generators.

The service's own commands (``migrate``, ``api-key``) live in ``serve_app.cli``; here they
are wrapped so that, with no ``DATABASE_URL`` set, they use the run command's local PostgreSQL."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path
from typing import Any

from serve_app.cli import add_service_commands, cmd_migrate
from serve_app.config import SERVE_CONFIG_PATH, AppArgs, load_serve_config
from serve_app.settings import Settings

DEFAULT_APP = "qa"


def _say(msg: str) -> None:
    # stderr: stdout of `local-services` is meant for `eval`.
    print(f"[serve_app] {msg}", file=sys.stderr, flush=True)


def local_urls(settings: Settings) -> dict[str, str]:
    """The configured URLs, starting local servers for the ones not configured."""
    from devtools import local_services

    urls = {}
    if settings.database_url:
        urls["DATABASE_URL"] = settings.database_url
    else:
        urls["DATABASE_URL"] = local_services.start_postgres(settings.data_dir)
        _say(f"local PostgreSQL (data in {settings.data_dir / 'postgres'}): {urls['DATABASE_URL']}")
    if settings.redis_url:
        urls["REDIS_URL"] = settings.redis_url
    else:
        urls["REDIS_URL"] = local_services.start_redis(settings.data_dir)
        _say(f"local Redis (data in {settings.data_dir / 'redis'}): {urls['REDIS_URL']}")
    return urls


def cmd_local_services(settings: Settings, _: argparse.Namespace) -> int:
    for k, v in local_urls(settings).items():
        print(f"export {k}='{v}'")
    return 0


def ensure_model(settings: Settings, app_args: AppArgs, quiet: bool = False) -> None:
    from devtools.provision import is_provisioned, provision_model
    from serve_app.llm import resolve_model_source

    if app_args.llm is None:
        return
    for model in app_args.llm.models:
        source = resolve_model_source(model.source)
        if source.startswith("/") and not is_provisioned(Path(source)):
            _say(f"provisioning {model.model_id} into {source} from {settings.model_source}")
            provision_model(settings.model_source, Path(source), progress=not quiet)


def cmd_run(settings: Settings, ns: argparse.Namespace) -> int:
    from devtools.local_ray import LocalRay, run_command_cluster_id

    config_path = Path(ns.config)
    config = load_serve_config(config_path)
    app_cfg = next(a for a in config["applications"] if a["name"] == ns.app)
    app_args = AppArgs.model_validate(app_cfg.get("args") or {})
    urls = local_urls(settings)
    cmd_migrate(settings.model_copy(update={"database_url": urls["DATABASE_URL"]}), ns)
    ensure_model(settings, app_args)
    http_port = int(config.get("http_options", {}).get("port", 8000))
    ray = LocalRay(head_cpus=ns.num_cpus, gcs_port=ns.ray_port, dashboard_port=8265, http_port=http_port,
                   metrics_port=8080, extra_env=urls, cluster_id=run_command_cluster_id())
    _say(f"starting Ray (GCS 127.0.0.1:{ray.gcs_port}, dashboard {ray.dashboard}, metrics :{ray.metrics_port})")
    ray.start()
    # The URLs reach the replicas through the Ray processes' environment.
    took = ray.deploy(config, timeout_s=ns.timeout, progress=True)
    _say(f"ready in {took:.0f}s: {ray.url}  (docs: {ray.url}/docs, Ray dashboard: {ray.dashboard})")
    _say(f'try: curl -s -XPOST {ray.url}/question -H "content-type: application/json" '
         "-d '{\"question\": \"What is the capital of France?\"}'")
    if ns.detach:
        _say("detached; stop with: make stop (python -m devtools stop)")
        return 0
    _say("Ctrl-C stops the service")
    stop = {"now": False}

    def _handler(*_: Any) -> None:
        stop["now"] = True

    signal.signal(signal.SIGINT, _handler)
    signal.signal(signal.SIGTERM, _handler)
    while not stop["now"]:
        time.sleep(0.5)
    return cmd_stop(settings, ns)


def cmd_stop(settings: Settings, _: argparse.Namespace) -> int:
    from devtools import local_services
    from devtools.local_ray import run_command_cluster_id, stop_cluster
    from devtools.monitoring import stop_prometheus

    # Only this checkout's run-command cluster: other Ray clusters on the
    # machine (another checkout, a test run) are left alone.
    stop_cluster(run_command_cluster_id())
    stop_prometheus(settings.data_dir)
    local_services.stop_redis(settings.data_dir)
    local_services.stop_postgres(settings.data_dir)
    _say("stopped Ray and the local PostgreSQL/Redis (if they were started here)")
    return 0


def cmd_monitoring(settings: Settings, ns: argparse.Namespace) -> int:
    from devtools.monitoring import start_prometheus

    try:
        url = start_prometheus(settings.data_dir, [f"127.0.0.1:{ns.metrics_port}"])
    except FileNotFoundError as exc:
        _say(str(exc))
        return 2
    _say(f"Prometheus at {url}, scraping Ray's metrics on 127.0.0.1:{ns.metrics_port}")
    _say("Ray dashboard metrics: start the service with RAY_PROMETHEUS_HOST set, e.g. "
         f"`RAY_PROMETHEUS_HOST={url} make run` (add RAY_GRAFANA_HOST=<your Grafana> for the embedded panels)")
    _say("Grafana: add this Prometheus as a data source and import "
         "kuberay/components/monitoring/dashboards/qa-service.json")
    return 0


def with_local_database(command: Any) -> Any:
    """A service command (``serve_app.cli``) run against the local PostgreSQL
    when ``DATABASE_URL`` is unset."""

    def run(settings: Settings, ns: argparse.Namespace) -> int:
        if not settings.database_url:
            settings = settings.model_copy(update={"database_url": local_urls(settings)["DATABASE_URL"]})
        return command(settings, ns)

    return run


def build_parser(settings: Settings) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m devtools", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="start PostgreSQL/Redis if no URL is set, provision the model, deploy on Ray")
    run.add_argument("--config", default=str(SERVE_CONFIG_PATH))
    run.add_argument("--app", default=DEFAULT_APP)
    run.add_argument("--num-cpus", type=int, default=8, help="logical CPUs for the local Ray head")
    run.add_argument("--ray-port", type=int, default=6380, help="Ray GCS port (6379 is Redis's)")
    run.add_argument("--timeout", type=float, default=900)
    run.add_argument("--detach", action="store_true", help="leave the service running and return")
    run.set_defaults(func=cmd_run)

    sub.add_parser("stop", help="stop Ray and the local PostgreSQL/Redis").set_defaults(func=cmd_stop)
    mon = sub.add_parser("monitoring", help="start a local Prometheus scraping the local Ray's metrics")
    mon.add_argument("--metrics-port", type=int, default=8080, help="Ray's --metrics-export-port")
    mon.set_defaults(func=cmd_monitoring)
    add_service_commands(sub)
    for name in ("migrate", "api-key"):
        sub.choices[name].set_defaults(func=with_local_database(sub.choices[name].get_default("func")))
    sub.add_parser("local-services", help="start local PostgreSQL/Redis; print their URLs").set_defaults(
        func=cmd_local_services
    )

    from devtools import cli_provision, kuberay_gen

    kuberay_gen.add_parser(sub)
    cli_provision.add_parser(
        sub, default_source=settings.model_source, default_dest=settings.model_dir / "SmolLM2-135M-Instruct"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    settings = Settings()
    ns = build_parser(settings).parse_args(argv)
    if ns.command in ("provision-model", "kuberay-config"):
        return ns.func(ns)
    return ns.func(settings, ns)
