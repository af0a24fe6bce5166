"""A training process's memory ceiling (worker/memory.py): the setting, each slot's default share,
and real training children that run out of memory under it, failing with one line that names the
batch size to lower."""

import pytest
from pydantic import ValidationError

from app.models import JobCreate
from app.settings import MIN_JOB_MEMORY, Settings
from tests.support.child import SpawnedChild
from worker import memory
from worker.protocol import ChildSpec, Failure

CEILING = 1536 * 1024**2
TINY = {
    "dataset": "synthetic", "pretrained": False, "epochs": 1, "batch_size": 8, "train_subset": 8, "test_subset": 8,
    "log_interval": 1, "wandb_mode": "disabled", "use_cuda": False,
}


def test_the_ceiling_is_read_in_bytes_and_refused_below_what_a_training_needs():
    assert Settings(job_memory="3GiB", _env_file=None).job_memory == 3 * 1024**3
    assert Settings(job_memory="2G", _env_file=None).job_memory == 2 * 10**9
    assert Settings(_env_file=None).job_memory is None
    with pytest.raises(ValidationError, match=r"TRAINBOARD_JOB_MEMORY \(488.3MiB\) is below the 1.5GiB a training"):
        Settings(job_memory="512M", _env_file=None)
    assert Settings(job_memory=MIN_JOB_MEMORY, _env_file=None).job_memory == MIN_JOB_MEMORY


def test_each_slot_gets_the_setting_or_an_even_share_of_80_percent_of_the_host():
    assert memory.slot_ceiling(3 * 1024**3, slots=4) == 3 * 1024**3
    assert memory.slot_ceiling(None, slots=1) == int(memory.host_memory() * 0.8)
    assert memory.slot_ceiling(None, slots=4) == int(memory.host_memory() * 0.8) // 4
    assert 0 < memory.host_memory() <= 2**50


def run_child(tmp_path, ceiling: int | None, **fields) -> tuple[int, list]:
    params = JobCreate.model_validate({**TINY, **fields})
    spec = ChildSpec(
        name="memory", params=params, job_dir=tmp_path, data_dir=tmp_path, cifar_verify=False, memory_ceiling=ceiling,
    )
    with SpawnedChild(spec, tmp_path / "job.log") as child:
        events = list(child.events(timeout=300))
        return child.process.wait(timeout=60), events


@pytest.mark.parametrize(
    "fields, reason",
    [
        # About 5.4 MiB a training image for resnet18_cifar on the CPU: 2.7 GiB for this batch.
        ({"model": "resnet18_cifar", "batch_size": 512, "train_subset": 512}, "at batch_size 512 on cpu"),
        # About 1.3 MiB a test image: 1.3 GiB to evaluate 1000 at once.
        ({"model": "resnet18_cifar", "test_batch_size": 1000, "test_subset": 1000}, "at test_batch_size 1000 on cpu"),
    ],
    ids=["training", "evaluation"],
)
def test_a_training_over_its_ceiling_fails_with_one_line_naming_the_batch_size_to_lower(tmp_path, fields, reason):
    returncode, events = run_child(tmp_path, CEILING, **fields)
    assert returncode == 1
    [failure] = [event for event in events if isinstance(event, Failure)]
    field = reason.split()[1]
    assert failure.reason == (
        f"out of memory {reason} (the memory ceiling per training process is 1.5GiB, TRAINBOARD_JOB_MEMORY): lower {field}"
    )
    log = (tmp_path / "job.log").read_text()
    assert "trainboard: memory ceiling 1.5GiB (TRAINBOARD_JOB_MEMORY)" in log
    assert "can't allocate memory" in log  # the allocator's own words stay in the log

