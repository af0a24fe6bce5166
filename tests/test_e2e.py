"""End to end with real processes: `trainboard serve` and `trainboard worker` on a SQLite file,
a data set in the CIFAR-10 python format, W&B offline."""

import re
from pathlib import Path

import pytest
import torch
from torchvision.models import resnet18

from tests.conftest import SMOKE_PARAMS
from tests.support.network import free_port

pytestmark = pytest.mark.slow


def test_failed_job_then_cifar10_job_succeeds(make_stack, tmp_path: Path):
    stack = make_stack()
    stack.serve()
    # Queued before the worker starts, so the worker meets the failing job first.
    doomed = stack.submit(**{**SMOKE_PARAMS, "pretrained": True, "name": "needs-weights"})
    good = stack.submit(**SMOKE_PARAMS, name="e2e-cifar", tags=["e2e"])
    stack.worker()

    failed = stack.wait_status(doomed["id"], ("succeeded", "failed"))
    assert failed["status"] == "failed"
    assert "pretrained ResNet-18 weights could not be downloaded" in failed["error"]
    assert "pretrained=false" in failed["error"]
    assert "\n" not in failed["error"]
    assert "Traceback" in stack.client.get(f"/jobs/{doomed['id']}/log").text

    job = stack.wait_status(good["id"], ("succeeded", "failed"))
    assert job["status"] == "succeeded", job["error"]
    assert job["metrics"]["test_accuracy"] > 30  # ten classes: chance is 10%
    assert 0 < job["metrics"]["test_loss"] < 2.3
    assert job["metrics"]["train_images_per_second"] > 0
    assert job["progress"]["epoch"] == job["progress"]["epochs"] == 2
    assert job["attempts"] == 1

    # The offline W&B run exists, with its sync command.
    assert job["wandb"]["mode"] == "offline" and job["wandb"]["url"] is None
    run_dir = Path(job["wandb"]["dir"])
    assert run_dir.is_dir() and list(run_dir.glob("*.wandb"))
    assert job["wandb"]["sync_command"] == f"wandb sync {run_dir}"

    # Per-epoch history, train loss every log_interval.
    epochs = stack.client.get(f"/jobs/{good['id']}/metrics", params={"kind": "epoch"}).json()
    assert [point["step"] for point in epochs] == [1, 2]
    assert epochs[-1]["values"]["test_accuracy"] == job["metrics"]["test_accuracy"]
    train_points = stack.client.get(f"/jobs/{good['id']}/metrics", params={"kind": "train"}).json()
    assert len(train_points) >= 2

    # model.pth downloads and loads into the tutorial's network with a 10-class head.
    [artifact] = job["artifacts"]
    assert artifact["name"] == "model.pth"
    download = stack.client.get(artifact["url"])
    assert download.status_code == 200 and len(download.content) == artifact["size"]
    (tmp_path / "model.pth").write_bytes(download.content)
    model = resnet18(num_classes=10)
    model.load_state_dict(torch.load(tmp_path / "model.pth", weights_only=True))

    page = stack.client.get(f"/jobs/{good['id']}", headers={"Accept": "text/html"}).text
    assert "e2e-cifar" in page and "succeeded" in page and run_dir.name in page
    # The last epoch's example predictions, as the tutorial's W&B "Examples": first image of each test batch.
    captions = re.findall(r"<figcaption>(Pred:\w+ Truth:\w+)</figcaption>", page)
    assert len(captions) == 400 // SMOKE_PARAMS["test_batch_size"]
    image = stack.client.get(re.search(r'src="(/jobs/\d+/examples/[^"?]+)', page).group(1))
    assert image.status_code == 200 and image.content.startswith(b"\x89PNG")
    assert stack.client.get(f"/jobs/{good['id']}/examples/..%2Fmodel.pth").status_code == 404
    listing = stack.client.get("/", headers={"Accept": "text/html"}).text
    assert "needs-weights" in listing and "e2e-cifar" in listing


def test_missing_cifar10_fails_with_what_to_do(make_stack, tmp_path: Path):
    empty = tmp_path / "no-data"
    stack = make_stack(data_dir=empty)
    stack.serve()
    stack.worker()
    job = stack.submit(**SMOKE_PARAMS)
    job = stack.wait_status(job["id"], ("succeeded", "failed"))
    assert job["status"] == "failed"
    assert job["error"].startswith(f"CIFAR-10 is not in {empty} and the download failed: ")
    assert job["error"].endswith("place cifar-10-python.tar.gz there or allow network access")

    # The worker lives on and trains the next job.
    synthetic = stack.submit(**SMOKE_PARAMS, dataset="synthetic", train_subset=256, test_subset=128, wandb_mode="disabled")
    synthetic = stack.wait_status(synthetic["id"], ("succeeded", "failed"))
    assert synthetic["status"] == "succeeded", synthetic["error"]
    assert synthetic["wandb"]["mode"] == "disabled" and synthetic["wandb"]["sync_command"] is None


def test_failing_online_wandb_init_falls_back_to_offline(make_stack):
    # An API key makes `auto` mean online; the W&B server it names refuses connections.
    stack = make_stack(
        TRAINBOARD_WANDB_MODE="auto", WANDB_API_KEY="k" * 40, WANDB_BASE_URL=f"http://127.0.0.1:{free_port()}",
        WANDB_INIT_TIMEOUT="3",
    )
    stack.serve()
    stack.worker()
    job = stack.submit(**{**SMOKE_PARAMS, "epochs": 1}, dataset="synthetic", train_subset=128, test_subset=64)
    assert job["params"]["wandb_mode"] == "auto"
    job = stack.wait_status(job["id"], ("succeeded", "failed"))
    assert job["status"] == "succeeded", job["error"]
    assert job["wandb"]["mode"] == "offline"
    assert job["note"].startswith("W&B online init failed")
    assert Path(job["wandb"]["dir"]).is_dir() and job["wandb"]["sync_command"]
    assert "k" * 40 not in stack.client.get(f"/jobs/{job['id']}/log").text
