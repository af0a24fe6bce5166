"""The example recipe (examples/trainboard-mnist), installed as a lab would install it: built by
pip into a throwaway folder and found through its `trainboard.recipes` entry point, by real
`trainboard serve` and `trainboard worker` processes. A job, a sweep and a resumed job run
through it; a worker without it leaves its jobs waiting, saying why."""

import gzip
import os
import signal
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import wait_for
from tests.test_worker import FAST_LEASES

pytestmark = pytest.mark.slow

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "trainboard-mnist"
SMALL = {
    "recipe": "mnist-cnn", "train_subset": 256, "test_subset": 128, "batch_size": 32, "log_interval": 2,
    "channels": 4, "seed": 3, "wandb_mode": "offline",
}


def write_idx(path: Path, array: np.ndarray) -> None:
    with gzip.open(path, "wb") as file:
        file.write(struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape))
        file.write(array.astype(np.uint8).tobytes())


def write_mnist(root: Path, seed: int = 0) -> Path:
    """MNIST's four IDX files (gzipped, as torchvision keeps them) of learnable 28x28 images:
    each class a bright square at its own place, plus noise."""
    rng = np.random.default_rng(seed)
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for images_name, labels_name, count in (
        ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", 512), ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", 256),
    ):
        labels = rng.integers(0, 10, size=count)
        images = rng.normal(30, 20, size=(count, 28, 28))
        for index, label in enumerate(labels):
            row, column = divmod(int(label), 4)
            images[index, 2 + row * 8:8 + row * 8, 2 + column * 6:7 + column * 6] += 200
        write_idx(raw / f"{images_name}.gz", images.clip(0, 255))
        write_idx(raw / f"{labels_name}.gz", labels)
    return root


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The example package installed into a folder of its own (nothing added to the test venv)."""
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
         "--target", str(target), str(EXAMPLE)],
        check=True, capture_output=True,
    )
    assert list(target.glob("trainboard_mnist-*.dist-info/entry_points.txt"))
    return target


def test_the_app_loads_the_example_recipe_without_torch(installed: Path):
    code = (
        "import sys; from app import recipes; from app.main import create_app; create_app(); "
        "found = recipes.registry(); assert 'mnist-cnn' in found.recipes, found.errors; "
        "found.get('mnist-cnn').json_schema(); assert 'torch' not in sys.modules, 'the recipe imported torch'"
    )
    checked = subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(installed)}, cwd=installed, capture_output=True, text=True,
    )
    assert checked.returncode == 0, checked.stderr


def test_the_example_recipe_runs_a_job_a_sweep_and_a_resumed_job(installed: Path, make_stack, tmp_path: Path):
    data = write_mnist(tmp_path / "data")
    stack = make_stack(data_dir=data, PYTHONPATH=str(installed), **FAST_LEASES)
    stack.serve()

    # The app found the recipe through its entry point: GET /recipes lists it with its schema.
    found = {recipe["name"]: recipe for recipe in stack.client.get("/recipes").json()}
    assert set(found) == {"cifar10-resnet18", "mnist-cnn"}
    assert found["mnist-cnn"]["version"] == "1.0" and found["mnist-cnn"]["checkpoints"]
    assert {"channels", "lr", "seed", "checkpoint_every"} <= set(found["mnist-cnn"]["schema"]["properties"])
    assert found["mnist-cnn"]["workers"] == []
    # `trainboard recipes NAME` prints its fields as `trainboard submit` takes them.
    listed = subprocess.run(
        [sys.executable, "-m", "app.cli", "recipes", "mnist-cnn", "--url", stack.base_url], env=stack.env,
        capture_output=True, text=True, timeout=60,
    )
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.startswith("mnist-cnn 1.0: Small CNN on MNIST") and "  channels           default 16; 4 to 128" in listed.stdout
    refused = stack.client.post("/jobs", json={**SMALL, "channels": 1000, "model": "resnet18"})
    assert refused.status_code == 422
    assert {error["field"] for error in refused.json()["detail"]} == {"channels", "model"}

    # A worker without the package cannot run it: the job waits and says why.
    waiting = stack.submit(**SMALL, epochs=2, name="plain")
    tutorial_only = stack.worker(env={"PYTHONPATH": "", "TRAINBOARD_RECIPES": "no_such_module:recipe"})
    wait_for(lambda: (stack.job(waiting["id"])["waiting_reason"] or {}).get("code") == "no_recipe", 60,
             message=lambda: f"the job to say no worker has its recipe; logs:\n{stack.logs()}")
    workers = stack.client.get("/workers").json()
    assert workers[0]["recipes"] == {"cifar10-resnet18": "1"}
    assert "no_such_module" in next(iter(workers[0]["recipe_errors"].values()))
    page = stack.client.get("/workers", headers={"Accept": "text/html"}).text
    assert "not loaded from TRAINBOARD_RECIPES no_such_module:recipe: ModuleNotFoundError" in page
    assert stack.job(waiting["id"])["status"] == "queued"
    tutorial_only.send_signal(signal.SIGTERM)
    tutorial_only.wait(timeout=40)

    # One with it runs the job: its metrics, examples, model and W&B run.
    # Hosts of their own (name, scratch) sharing the app's store, as an NFS mount gives them.
    shared = {"TRAINBOARD_ARTIFACTS_DIR": stack.env["TRAINBOARD_ARTIFACTS_DIR"]}
    stack.worker(host="alpha", env=shared)
    done = stack.wait_status(waiting["id"], ("succeeded", "failed"))
    assert done["status"] == "succeeded", done["error"]
    assert done["recipe"] == "mnist-cnn" and done["recipe_version"] == "1.0"
    assert done["metrics"]["test_accuracy"] > 50 and done["metrics"]["epoch"] == 2
    assert [a["name"] for a in done["artifacts"]] == ["model.pth"]
    model = stack.client.get(f"/jobs/{waiting['id']}/artifacts/model.pth")
    assert model.status_code == 200 and len(model.content) == done["artifacts"][0]["size"] > 0
    assert done["wandb"]["mode"] == "offline" and done["wandb"]["run_id"]
    epochs = stack.client.get(f"/jobs/{waiting['id']}/metrics", params={"kind": "epoch"}).json()
    assert [point["step"] for point in epochs] == [1, 2]
    assert stack.client.get(f"/jobs/{waiting['id']}/metrics", params={"kind": "train"}).json()
    assert stack.client.get(f"/jobs/{waiting['id']}/examples/00.png").status_code == 200
    page = stack.client.get(f"/jobs/{waiting['id']}", headers={"Accept": "text/html"}).text
    assert "mnist-cnn" in page and "Pred:" in page

    # A sweep over the recipe's own fields, judged by its metric.
    sweep = stack.client.post("/sweeps", json={
        "name": "mnist-lr", "recipe": "mnist-cnn", "method": "grid", "metric": {"name": "Test Accuracy", "goal": "maximize"},
        "parameters": {"lr": {"values": [0.02, 0.05]}, "epochs": {"value": 1}, "channels": {"value": 4},
                       "train_subset": {"value": 128}, "test_subset": {"value": 64}},
    })
    assert sweep.status_code == 201, sweep.text
    finished = wait_for(
        lambda: (current := stack.client.get(f"/sweeps/{sweep.json()['id']}").json())["status"] != "running" and current,
        240, interval=0.5, message=lambda: f"the sweep to finish; logs:\n{stack.logs()}",
    )
    assert finished["status"] == "finished" and finished["recipe"] == "mnist-cnn"
    assert sorted(trial["params"]["lr"] for trial in finished["jobs"]) == [0.02, 0.05]
    assert all(trial["status"] == "succeeded" for trial in finished["jobs"])

    # Killed after a checkpoint, a job resumes on another host and ends as an uninterrupted twin does.
    twin = stack.submit(**SMALL, epochs=4, name="twin")
    stack.wait_status(twin["id"], ("succeeded", "failed"))
    alpha = stack.processes[-1]
    alpha.send_signal(signal.SIGTERM)
    alpha.wait(timeout=40)
    interrupted = stack.submit(**SMALL, epochs=4, name="interrupted")
    doomed = stack.worker(host="beta", env=shared)
    wait_for(lambda: ((stack.job(interrupted["id"])["checkpoint"] or {}).get("epoch") or 0) >= 1, 120, interval=0.1,
             message=lambda: f"a checkpoint; logs:\n{stack.logs()}")
    doomed.send_signal(signal.SIGKILL)
    doomed.wait()
    stack.worker(host="gamma", env=shared)
    resumed = stack.wait_status(interrupted["id"], ("succeeded", "failed"))
    assert resumed["status"] == "succeeded", resumed["error"]
    log = stack.client.get(f"/jobs/{interrupted['id']}/log").text
    assert resumed["attempts"] == 2 and (resumed["resumed_from_epoch"] or 0) >= 1, log[-3000:]
    assert [point["step"] for point in stack.client.get(
        f"/jobs/{interrupted['id']}/metrics", params={"kind": "epoch"}).json()] == [1, 2, 3, 4]
    assert "resumed mnist-cnn from the checkpoint" in log
    expected = stack.job(twin["id"])["metrics"]
    assert resumed["metrics"]["test_accuracy"] == expected["test_accuracy"]
    assert resumed["metrics"]["test_loss"] == pytest.approx(expected["test_loss"], rel=1e-5)
