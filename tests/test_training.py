"""The training engine in-process (worker/train.py, data.py, tracking.py) and the job fields that
drive it (presets in app/presets.py, JobCreate): every option trains, the recipe learns, seeds
repeat, metrics mean what the tutorial's mean, a resumed job ends as if never interrupted, the
CIFAR-10 tensor cache follows its files."""

import base64
import io
import math
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from pydantic import ValidationError

from app.models import JobCreate
from app.presets import FAST94, PRESETS, TUTORIAL, resolve
from app.settings import JobFiles
from tests.conftest import write_cifar10
from tests.support.child import SpawnedChild
from tests.support.tutorial import tutorial_loop
from worker import train
from worker.data import CIFAR_CACHE_NAME, ImageSet, cifar10, synthetic
from worker.nets import PaddingAwareConv2d, build_model, live_taps, skip_padding_taps
from worker.protocol import CHECKPOINT_SIGNAL, CheckpointSaved, ChildSpec, Event, Progress, Result
from worker.reporter import CheckpointRequest, RecordingReporter
from worker.tracking import histogram_interval

TINY = {
    "dataset": "synthetic",
    "pretrained": False,
    "epochs": 1,
    "batch_size": 32,
    "train_subset": 64,
    "test_subset": 32,
    "log_interval": 1,
    "wandb_mode": "disabled",
}


def train_job(tmp_path: Path, data: ImageSet | None = None, **fields: Any) -> RecordingReporter:
    """Validate the fields as the API would, then train in this process."""
    params = JobCreate.model_validate({**TINY, **fields})
    recorder = RecordingReporter()
    files = JobFiles(tmp_path / "job")
    files.root.mkdir(exist_ok=True)
    train.run(params, name="test", files=files, data_dir=tmp_path, cifar_verify=False, reporter=recorder, data=data)
    return recorder


# ---------------------------------------------------------------------------------------------
# Job fields and presets
# ---------------------------------------------------------------------------------------------


def test_defaults_are_the_tutorial_preset():
    job = JobCreate()
    assert job.preset == "tutorial"
    assert {name: getattr(job, name) for name in TUTORIAL} == TUTORIAL
    assert (job.batch_size, job.epochs, job.lr, job.momentum, job.seed, job.log_interval) == (64, 5, 0.01, 0.1, 2043, 10)
    assert (job.optimizer, job.precision, job.wandb_watch) == ("sgd", "auto", "all")


def test_a_preset_fills_its_fields_and_explicit_fields_win():
    fast = JobCreate(preset="fast94")
    assert {name: getattr(fast, name) for name in FAST94} == FAST94
    assert fast.seed == TUTORIAL["seed"]  # fields the preset leaves alone keep the tutorial's value

    tuned = JobCreate.model_validate({"preset": "fast94", "epochs": 10, "nesterov": False, "tta": "none"})
    assert (tuned.epochs, tuned.nesterov, tuned.tta) == (10, False, "none")
    assert tuned.lr == FAST94["lr"] and tuned.model == "resnet18_cifar"


def test_a_stored_job_revalidates_to_the_same_parameters():
    """The queue stores model_dump() and a retry validates it again: every field is explicit by then."""
    stored = JobCreate(preset="fast94", epochs=7).model_dump(mode="json")
    assert JobCreate.model_validate(stored).model_dump(mode="json") == stored
    assert resolve("fast94", epochs=7) == {key: value for key, value in stored.items() if key not in ("name", "tags")}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("preset", "fast95"), ("preset", ["fast94"]), ("optimizer", "adam"), ("weight_decay", -0.1), ("weight_decay", 2),
        ("lr_schedule", "step"), ("warmup_fraction", -0.1), ("warmup_fraction", 1.5), ("label_smoothing", 0.6),
        ("augment", "mixup"), ("precision", "fp8"), ("channels_last", "sideways"), ("compile", True),
        ("compile", "max-autotune"), ("deterministic", "maybe"), ("tta", "ten_crop"), ("wandb_watch", "everything"),
        ("wandb_watch_freq", 0), ("wandb_watch_freq", 1_000_001), ("nesterov", "perhaps"),
    ],
)
def test_out_of_bounds_is_refused_naming_the_field(field, value):
    with pytest.raises(ValidationError) as caught:
        JobCreate.model_validate({field: value})
    assert [error["loc"][0] for error in caught.value.errors()] == [field]


def test_nesterov_without_momentum_is_refused_naming_nesterov():
    with pytest.raises(ValidationError) as caught:
        JobCreate(preset="fast94", momentum=0)
    assert [error["loc"][0] for error in caught.value.errors()] == ["nesterov"]
    assert JobCreate(preset="fast94", optimizer="adamw").nesterov  # adamw has no Nesterov momentum to refuse


def test_every_field_is_documented_in_the_schema():
    properties = JobCreate.model_json_schema()["properties"]
    assert set(properties) >= set(TUTORIAL) | {"preset"}
    assert all(spec.get("description") for spec in properties.values())
    assert set(PRESETS) == set(properties["preset"]["enum"])


def test_the_job_model_never_imports_torch():
    code = "import sys, app.models; assert 'torch' not in sys.modules, 'app.models imported torch'"
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------------------------------------
# Every option trains a tiny job end to end
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"optimizer": "adamw", "lr": 0.001, "weight_decay": 0.05},
        {"momentum": 0.9, "nesterov": True, "weight_decay": 5e-4},
        {"lr_schedule": "onecycle", "warmup_fraction": 0.3},
        {"lr_schedule": "cosine", "warmup_fraction": 0.1},
        {"lr_schedule": "constant", "warmup_fraction": 1.0},
        {"label_smoothing": 0.2},
        {"augment": "flip_crop"},
        {"augment": "flip_crop_cutout"},
        {"precision": "fp32"},
        {"precision": "bf16"},
        {"precision": "fp16", "batch_size": 16, "train_subset": 32, "test_subset": 16},  # CPUs have no fast fp16
        {"channels_last": True},
        {"deterministic": False},
        {"tta": "flip"},
        {"model": "resnet18_cifar", "batch_size": 16, "train_subset": 32, "test_subset": 16},
        {"preset": "fast94", "batch_size": 16, "train_subset": 32, "test_subset": 16},
        {"compile": "default"},
        {"compile": "reduce-overhead"},
    ],
    ids=lambda fields: ",".join(f"{key}={value}" for key, value in fields.items()) or "tutorial",
)
def test_each_option_trains_a_tiny_job(tmp_path, fields):
    recorder = train_job(tmp_path, **fields)
    [epoch] = recorder.epochs
    assert 0 <= epoch["test_accuracy"] <= 100
    assert math.isfinite(epoch["test_loss"]) and math.isfinite(epoch["train_loss"])
    assert epoch["train_images_per_second"] > 0
    assert len(recorder.train_points) == 2  # log_interval 1, two batches
    assert recorder.final["artifacts"][0]["name"] == "model.pth"
    state = torch.load(tmp_path / "job" / "model.pth", weights_only=True)
    assert not any(key.startswith("_orig_mod") for key in state)  # loadable without torch.compile
    assert recorder.wandb_events == [{"mode": "disabled", "url": None, "run_id": None, "run_dir": None, "note": None}]


def test_each_evaluated_epoch_reports_its_examples_as_pngs_with_captions(tmp_path):
    recorder = train_job(tmp_path, epochs=2, test_subset=48, test_batch_size=16)
    assert [event.epoch for event in recorder.examples] == [1, 2]
    [*_, last] = recorder.examples
    assert len(last.examples) == 3  # the first image of each test batch
    for example in last.examples:
        assert re.fullmatch(r"Pred:\w+ Truth:\w+", example.caption)
        image = Image.open(io.BytesIO(base64.b64decode(example.png_base64)))
        assert (image.format, image.size, image.mode) == ("PNG", (32, 32), "RGB")
    assert not (tmp_path / "job" / "examples").exists()


@pytest.mark.parametrize("watch", ["all", "gradients", "parameters", "off"])
def test_wandb_watch_runs_offline(tmp_path, watch, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    recorder = train_job(tmp_path, wandb_mode="offline", wandb_watch=watch, wandb_watch_freq=1)
    [event] = recorder.wandb_events
    assert event["mode"] == "offline" and Path(event["run_dir"]).is_dir()
    assert recorder.final is not None


def test_histograms_are_bounded_per_job_by_raising_the_watch_interval():
    assert histogram_interval(1, steps=25_000_000, max_sets=1000) == 25_000
    assert histogram_interval(1000, steps=3910, max_sets=1000) == 1000  # the tutorial's 5 epochs: untouched
    assert histogram_interval(3, steps=3001, max_sets=1000) == 4
    assert histogram_interval(1, steps=10**9, max_sets=None) == 1


def test_a_job_whose_watch_interval_would_log_too_many_histograms_says_so_in_its_log(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_SILENT", "true")
    params = JobCreate.model_validate({**TINY, "wandb_mode": "offline", "wandb_watch": "all", "wandb_watch_freq": 1})
    files = JobFiles(tmp_path / "job")
    files.root.mkdir()
    recorder = RecordingReporter()
    train.run(params, name="watched", files=files, data_dir=tmp_path, cifar_verify=False, reporter=recorder, max_histograms=1)
    assert recorder.final is not None
    assert ("trainboard: wandb_watch_freq 1 would log 2 histogram sets; logging every 2 batches instead, "
            "at most 1 a job (TRAINBOARD_MAX_HISTOGRAMS)") in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# The recipe, the tutorial's loop, seeds, metrics
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def learnable() -> ImageSet:
    return synthetic(512, 256)


def test_the_fast94_recipe_learns_on_the_synthetic_set(tmp_path, learnable):
    """fast94's optimizer, schedule, weight decay, smoothing, augmentation and TTA, on the network
    that costs 15 times less, at batch 64 with the lr scaled down from batch 500 to match."""
    recorder = train_job(
        tmp_path, learnable, preset="fast94", model="resnet18", batch_size=64, lr=FAST94["lr"] * 64 / 500, epochs=3,
        train_subset=None, test_subset=None, log_interval=4,
    )
    losses = [point["train_loss"] for point in recorder.train_points]
    assert losses[-1] < losses[0] / 2
    assert recorder.epochs[-1]["test_accuracy"] >= 80, recorder.epochs


def test_the_tutorial_preset_matches_the_tutorials_own_loop(tmp_path, learnable):
    """Same images, model and hyperparameters; the two draw their batches differently, so they
    agree in what they reach, not bit for bit."""
    fields = {**TINY, "epochs": 3, "train_subset": None, "test_subset": None}
    ours = train_job(tmp_path, learnable, **fields).epochs[-1]
    theirs = tutorial_loop(learnable, resolve(**fields), torch.device("cpu"))[-1]
    assert abs(ours["test_accuracy"] - theirs["test_accuracy"]) <= 3, (ours, theirs)
    assert ours["test_accuracy"] >= 80
    assert 0.5 < ours["test_loss"] / theirs["test_loss"] < 2  # both per sample: a sum over batches is 8 times more


def test_the_same_seed_repeats_a_run_and_another_seed_does_not(tmp_path):
    fields = {"augment": "flip_crop_cutout", "lr_schedule": "onecycle", "warmup_fraction": 0.5}
    first = train_job(tmp_path, **fields).epochs
    again = train_job(tmp_path, **fields).epochs
    other = train_job(tmp_path, seed=7, **fields).epochs
    measured = ("test_accuracy", "test_loss", "train_loss")
    assert [[epoch[key] for key in measured] for epoch in first] == [[epoch[key] for key in measured] for epoch in again]
    assert first[0]["train_loss"] != other[0]["train_loss"]


def test_test_loss_is_averaged_per_sample_over_uneven_batches():
    data = synthetic(16, 50)
    params = JobCreate(pretrained=False, use_cuda=False)
    training = train.Training(build_model("resnet18", pretrained=False), params, torch.device("cpu"), steps=1)
    accuracy, loss, examples = train.evaluate(training, data, batch_size=16, tta="none")  # batches of 16, 16, 16, 2

    training.model.eval()
    with torch.no_grad():
        logits = training.model(train.to_inputs(data.test_images, torch.contiguous_format))
    assert loss == pytest.approx(torch.nn.functional.cross_entropy(logits, data.test_labels).item(), rel=1e-5)
    assert accuracy == pytest.approx(100.0 * (logits.argmax(1) == data.test_labels).float().mean().item())
    assert len(examples) == 4 and examples[0][0].shape == (32, 32, 3)
    assert examples[0][1].startswith("Pred:") and " Truth:" in examples[0][1]


def test_a_test_batch_over_the_evaluation_chunk_is_evaluated_a_chunk_at_a_time_with_the_same_results(monkeypatch):
    data = synthetic(16, 50)
    params = JobCreate(pretrained=False, use_cuda=False)
    training = train.Training(build_model("resnet18", pretrained=False), params, torch.device("cpu"), steps=1)
    whole = train.evaluate(training, data, batch_size=24, tta="flip")  # test batches of 24, 24, 2

    seen = []
    training.model.register_forward_pre_hook(lambda _module, inputs: seen.append(len(inputs[0])))
    monkeypatch.setattr(train, "EVALUATION_CHUNK", 10)
    accuracy, loss, examples = train.evaluate(training, data, batch_size=24, tta="flip")
    assert seen == [10, 10, 10, 10, 4, 4, 10, 10, 10, 10, 4, 4, 2, 2]  # each chunk, then its mirror
    assert accuracy == whole[0] and loss == pytest.approx(whole[1], rel=1e-6)
    assert [caption for _, caption in examples] == [caption for _, caption in whole[2]]  # a test batch's first image
    assert all((image == before).all() for (image, _), (before, _) in zip(examples, whole[2]))


def test_precision_auto_is_fp32_on_the_cpu():
    cpu = torch.device("cpu")
    assert train.resolve_precision("auto", cpu) is torch.float32
    assert train.resolve_precision("bf16", cpu) is torch.bfloat16
    assert train.resolve_precision("fp16", cpu) is torch.float16


@pytest.mark.parametrize("schedule", ["constant", "onecycle", "cosine"])
def test_the_learning_rate_warms_up_then_follows_its_schedule(schedule):
    params = JobCreate(lr=0.2, lr_schedule=schedule, warmup_fraction=0.2)
    training = train.Training(build_model("resnet18", pretrained=False), params, torch.device("cpu"), steps=100)
    rates = [training.learning_rate(step) for step in range(100)]
    assert rates[0] == pytest.approx(0.01) and rates[19] == pytest.approx(0.2) and max(rates) == pytest.approx(0.2)
    assert all(a < b for a, b in zip(rates[:20], rates[1:20]))
    if schedule == "constant":
        assert set(rates[20:]) == {0.2}
    else:
        assert all(a >= b for a, b in zip(rates[20:], rates[21:])) and rates[-1] < 0.01


# ---------------------------------------------------------------------------------------------
# Checkpoints and resume
# ---------------------------------------------------------------------------------------------

# Every source of randomness and every piece of state a resume must restore is in play: augmentation
# draws, a schedule by step, momentum; four batches an epoch, so that one can stop mid-epoch.
RESUMABLE = {
    "epochs": 4, "batch_size": 8, "train_subset": 32, "test_subset": 16, "augment": "flip_crop_cutout",
    "lr_schedule": "onecycle", "warmup_fraction": 0.25, "momentum": 0.9, "deterministic": True,
}


class StoppingReporter(RecordingReporter):
    """Records like the fake it extends, and the progress of every Progress event; asks for a
    checkpoint through the handler CHECKPOINT_SIGNAL calls in a child once `stop_when` holds for an event."""

    def __init__(self, stop_when: Callable[[Event], bool] | None = None):
        super().__init__()
        self.request = CheckpointRequest()
        self.stop_when = stop_when
        self.progress: list[dict[str, Any]] = []

    def report(self, event: Event) -> None:
        super().report(event)
        if isinstance(event, Progress):
            self.progress.append(event.progress)
        if self.stop_when is not None and self.stop_when(event):
            self.request.ask()


def resumable_job(
    folder: Path, stop_when: Callable[[Event], bool] | None = None, resume_from: Path | None = None, **fields: Any
) -> StoppingReporter:
    params = JobCreate.model_validate({**TINY, **RESUMABLE, **fields})
    recorder = StoppingReporter(stop_when)
    folder.mkdir()
    train.run(
        params, name="resumable", files=JobFiles(folder), data_dir=folder, cifar_verify=False, reporter=recorder,
        resume_from=resume_from, checkpoint_request=recorder.request,
    )
    return recorder


def after_epoch(epoch: int) -> Callable[[Event], bool]:
    return lambda event: isinstance(event, Progress) and event.metrics is not None and event.metrics["epoch"] == epoch


def after_batch(epoch: int, batch: int) -> Callable[[Event], bool]:
    return lambda event: isinstance(event, Progress) and any(
        kind == "train" and (values["epoch"], values["batch"]) == (epoch, batch) for kind, _, values in event.points
    )


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> tuple[StoppingReporter, dict[str, torch.Tensor]]:
    folder = tmp_path_factory.mktemp("uninterrupted") / "job"
    recorder = resumable_job(folder)
    return recorder, torch.load(folder / "model.pth", weights_only=True)


def assert_ends_as_uninterrupted(
    first: StoppingReporter, resumed: StoppingReporter, folder: Path, uninterrupted: tuple[StoppingReporter, dict]
) -> None:
    reference, reference_weights = uninterrupted
    final, expected = resumed.final["metrics"], reference.final["metrics"]
    assert abs(final["test_accuracy"] - expected["test_accuracy"]) <= 1e-6
    assert abs(final["test_loss"] - expected["test_loss"]) <= 1e-6
    weights = torch.load(folder / "model.pth", weights_only=True)
    assert weights.keys() == reference_weights.keys()
    assert all(torch.equal(weights[name], reference_weights[name]) for name in weights)
    # Each batch trained once, in the same order, to the same loss: none repeated, none skipped.
    assert first.train_points + resumed.train_points == reference.train_points
    measured = ("epoch", "test_accuracy", "test_loss", "train_loss")
    assert [[epoch[key] for key in measured] for epoch in first.epochs + resumed.epochs] == [
        [epoch[key] for key in measured] for epoch in reference.epochs
    ]


def test_a_job_stopped_after_epoch_2_of_4_and_resumed_ends_as_if_never_stopped(tmp_path, uninterrupted, capsys):
    first = resumable_job(tmp_path / "first", stop_when=after_epoch(2))
    assert first.final is None  # the slot asked for the checkpoint: no result
    assert [(saved.epoch, saved.batch, saved.step) for saved in first.checkpoints] == [(1, 0, 4), (2, 0, 8)]
    [*_, checkpoint] = first.checkpoints
    assert checkpoint.path == tmp_path / "first" / "checkpoints" / "checkpoint-e2-b0.pt" and checkpoint.path.is_file()
    assert checkpoint.progress == {"epoch": 2, "epochs": 4, "batch": 4, "batches": 4}

    resumed = resumable_job(tmp_path / "resumed", resume_from=checkpoint.path)
    assert "trainboard: resumed from the checkpoint after epoch 2, batch 0\n" in capsys.readouterr().out
    assert [epoch["epoch"] for epoch in resumed.epochs] == [3, 4]
    assert all((progress["epoch"], progress["batch"]) > (2, 0) for progress in resumed.progress)
    assert_ends_as_uninterrupted(first, resumed, tmp_path / "resumed", uninterrupted)


def test_a_job_stopped_mid_epoch_and_resumed_repeats_no_batch_and_ends_as_if_never_stopped(tmp_path, uninterrupted, capsys):
    first = resumable_job(tmp_path / "first", stop_when=after_batch(2, 3))
    assert first.final is None and [epoch["epoch"] for epoch in first.epochs] == [1]
    [*_, checkpoint] = first.checkpoints
    assert (checkpoint.epoch, checkpoint.batch, checkpoint.step) == (1, 3, 7)
    assert checkpoint.progress == {"epoch": 1, "epochs": 4, "batch": 3, "batches": 4}
    assert torch.load(checkpoint.path, weights_only=True)["epoch_state"]["order"].shape == (32,)

    resumed = resumable_job(tmp_path / "resumed", resume_from=checkpoint.path)
    assert "trainboard: resumed from the checkpoint after epoch 1, batch 3\n" in capsys.readouterr().out
    assert (resumed.train_points[0]["epoch"], resumed.train_points[0]["batch"]) == (2, 4)
    assert all((progress["epoch"], progress["batch"]) > (1, 3) for progress in resumed.progress)
    assert_ends_as_uninterrupted(first, resumed, tmp_path / "resumed", uninterrupted)


def test_a_checkpoint_holds_what_a_resume_needs(uninterrupted):
    reference, _ = uninterrupted
    [*_, saved] = reference.checkpoints
    checkpoint = torch.load(saved.path, weights_only=True)
    assert (checkpoint["epoch"], checkpoint["batch"], checkpoint["step"]) == (4, 0, 16)
    assert checkpoint["metrics"] == reference.epochs[-1] and checkpoint["epoch_state"] is None
    assert checkpoint["wandb_run_id"] is None  # W&B disabled
    assert set(checkpoint["rng"]) == {"python", "numpy", "torch", "cuda"}
    assert {"model", "optimizer", "scaler"} <= set(checkpoint)
    assert all("momentum_buffer" in state for state in checkpoint["optimizer"]["state"].values())
    assert not list(saved.path.parent.glob("*.partial"))


@pytest.mark.parametrize(("every", "epochs"), [(0, []), (2, [2, 4])])
def test_checkpoint_every_n_epochs_writes_after_those_epochs_only(tmp_path, every, epochs):
    recorder = resumable_job(tmp_path / "job", checkpoint_every=every, train_subset=16)
    assert [saved.epoch for saved in recorder.checkpoints] == epochs
    assert all(saved.batch == 0 for saved in recorder.checkpoints)
    written = sorted(path.name for path in (tmp_path / "job" / "checkpoints").glob("*")) if epochs else []
    assert written == sorted(f"checkpoint-e{epoch}-b0.pt" for epoch in epochs)
    assert recorder.final is not None


def test_a_resumed_job_continues_its_wandb_run(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    fields = {"epochs": 2, "train_subset": 16, "wandb_mode": "offline"}
    first = resumable_job(tmp_path / "first", stop_when=after_epoch(1), **fields)
    [saved] = first.checkpoints
    resumed = resumable_job(tmp_path / "resumed", resume_from=saved.path, **fields)
    [started], [continued] = first.wandb_events, resumed.wandb_events
    assert torch.load(saved.path, weights_only=True)["wandb_run_id"] == started["run_id"] is not None
    assert continued["run_id"] == started["run_id"]
    assert continued["run_dir"] != started["run_dir"]  # offline: a folder per attempt
    assert resumed.final is not None


def test_the_child_on_the_checkpoint_signal_checkpoints_mid_epoch_and_exits_0_without_a_result(tmp_path):
    """A real `python -m worker.child`, spawned as a worker slot does."""
    params = JobCreate.model_validate({**TINY, "epochs": 2, "batch_size": 8, "train_subset": 512})
    spec = ChildSpec(name="signalled", params=params, job_dir=tmp_path, data_dir=tmp_path, cifar_verify=False)
    events = []
    with SpawnedChild(spec, tmp_path / "job.log") as child:
        for event in child.events(timeout=300):
            events.append(event)
            if after_batch(1, 1)(event):
                child.process.send_signal(CHECKPOINT_SIGNAL)
        assert child.process.wait(timeout=60) == 0, (tmp_path / "job.log").read_text()
    [saved] = [event for event in events if isinstance(event, CheckpointSaved)]
    assert not [event for event in events if isinstance(event, Result)]
    assert saved.epoch == 0 and 1 <= saved.batch < 64  # mid-epoch, where the signal found it
    trained = [values["batch"] for event in events if isinstance(event, Progress) for _, _, values in event.points]
    assert trained == list(range(1, saved.batch + 1))
    checkpoint = torch.load(saved.path, weights_only=True)
    assert (checkpoint["epoch"], checkpoint["batch"], checkpoint["epoch_state"]["batch"]) == (0, saved.batch, saved.batch)
    build_model("resnet18", pretrained=False).load_state_dict(checkpoint["model"])


# ---------------------------------------------------------------------------------------------
# Convolutions that skip the taps meeting only padding
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "size, kernel, stride, padding, expected",
    [
        (1, 3, 1, 1, (1, 2)),  # a 1x1 map: the centre tap only
        (2, 3, 2, 1, (1, 3)),  # 2 pixels, stride 2: one output, which never sees the first tap
        (2, 3, 1, 1, None),  # each tap meets a pixel at some output
        (32, 7, 2, 3, None),
        (1, 1, 1, 0, None),
        (2, 7, 1, 3, (2, 5)),
        (1, 1, 3, 1, None),  # no tap meets the pixel: left to Conv2d, which gives the bias
        (1, 5, 1, 1, None),  # smaller than the kernel: left to Conv2d's own error
    ],
)
def test_live_taps_are_those_that_meet_a_pixel(size, kernel, stride, padding, expected):
    assert live_taps(size, kernel, stride, padding) == expected


@pytest.mark.parametrize(
    "input_size, kernel, stride, padding, bias, groups, layout",
    [
        ((1, 1), 3, 1, 1, False, 1, torch.contiguous_format),
        ((2, 2), 3, 2, 1, True, 1, torch.contiguous_format),
        ((1, 4), 3, 1, 1, False, 1, torch.contiguous_format),
        ((1, 1), (3, 5), 1, (1, 2), True, 1, torch.contiguous_format),  # rows and columns trimmed differently
        ((1, 1), 3, 1, 1, False, 8, torch.contiguous_format),
        ((1, 1), 3, 1, 1, True, 1, torch.channels_last),
        ((1, 1), 1, 3, 1, True, 1, torch.contiguous_format),  # no tap meets the pixel
        ((8, 8), 3, 1, 1, False, 1, torch.contiguous_format),  # nothing to skip
    ],
)
def test_a_padding_aware_convolution_computes_what_conv2d_does(input_size, kernel, stride, padding, bias, groups, layout):
    torch.manual_seed(0)
    plain = torch.nn.Conv2d(16, 24, kernel, stride=stride, padding=padding, bias=bias, groups=groups)
    aware = PaddingAwareConv2d(16, 24, kernel, stride=stride, padding=padding, bias=bias, groups=groups)
    aware.load_state_dict(plain.state_dict())
    plain, aware = plain.to(memory_format=layout), aware.to(memory_format=layout)
    inputs = torch.randn(4, 16, *input_size).contiguous(memory_format=layout).requires_grad_()
    outputs = [conv(inputs) for conv in (plain, aware)]
    assert outputs[0].shape == outputs[1].shape and torch.allclose(outputs[0], outputs[1], atol=1e-5)
    upstream = torch.randn_like(outputs[0])
    grads = [torch.autograd.grad(out, [inputs, *conv.parameters()], upstream) for out, conv in zip(outputs, (plain, aware))]
    for plain_grad, aware_grad in zip(*grads):
        assert plain_grad.shape == aware_grad.shape and torch.allclose(plain_grad, aware_grad, atol=1e-5)


def test_resnet18_on_cifar_sized_inputs_trains_alike_with_padding_taps_skipped():
    torch.manual_seed(0)
    plain = build_model("resnet18", pretrained=False)
    aware = skip_padding_taps(build_model("resnet18", pretrained=False))
    aware.load_state_dict(plain.state_dict())
    assert isinstance(aware.layer4[1].conv2, PaddingAwareConv2d) and aware.state_dict().keys() == plain.state_dict().keys()
    inputs, labels = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    for model in (plain, aware):
        torch.nn.functional.cross_entropy(model(inputs), labels).backward()
    for (name, a), b in zip(plain.named_parameters(), aware.parameters()):
        assert torch.allclose(a.grad, b.grad, rtol=1e-4, atol=1e-5), name
    assert (aware.layer4[1].conv2.weight.grad[:, :, 0] == 0).all()  # the left-out taps' gradient, as before


def test_training_on_the_cpu_skips_padding_taps():
    params = JobCreate(pretrained=False, use_cuda=False)
    training = train.Training(build_model("resnet18", pretrained=False), params, torch.device("cpu"), steps=1)
    assert isinstance(training.model.layer4[0].conv1, PaddingAwareConv2d)


# ---------------------------------------------------------------------------------------------
# Batches on the device
# ---------------------------------------------------------------------------------------------


def test_random_crop_shifts_each_image_by_at_most_four_pixels_with_zero_fill():
    images = torch.randint(1, 256, (64, 3, 32, 32), dtype=torch.uint8)
    cropped = train.random_crop(images)
    padded = torch.nn.functional.pad(images, (4, 4, 4, 4))
    shifts = set()
    for original, crop in zip(padded, cropped):
        [shift] = [(dy, dx) for dy in range(9) for dx in range(9) if torch.equal(original[:, dy:dy + 32, dx:dx + 32], crop)]
        shifts.add(shift)
    assert len(shifts) > 10  # drawn per image


def test_random_flip_mirrors_about_half_the_images():
    images = torch.randint(0, 256, (400, 3, 32, 32), dtype=torch.uint8)
    flipped = train.random_flip(images)
    mirrored = [torch.equal(out, image.flip(2)) for out, image in zip(flipped, images)]
    kept = [torch.equal(out, image) for out, image in zip(flipped, images)]
    assert all(m or k for m, k in zip(mirrored, kept))
    assert 120 < sum(mirrored) < 280


def test_cutout_zeroes_one_square_of_at_most_eight_by_eight():
    inputs = torch.ones(200, 3, 32, 32)
    zeroed = (train.cutout(inputs) == 0).all(dim=1)
    counts = zeroed.flatten(1).sum(1)
    assert counts.max() == 64 and counts.min() >= 16  # clipped at the borders down to a 4x4 corner
    rows, columns = zeroed.any(2), zeroed.any(1)
    assert (rows.sum(1) * columns.sum(1) == counts).all()  # a rectangle


def test_inputs_are_normalised_like_the_tutorials_transform():
    images = torch.tensor([0, 51, 127, 255], dtype=torch.uint8).view(1, 1, 2, 2).expand(1, 3, 2, 2)
    inputs = train.to_inputs(images, torch.channels_last)
    assert inputs.is_contiguous(memory_format=torch.channels_last)
    expected = (images.float() / 255 - 0.5) / 0.5
    assert torch.allclose(inputs, expected, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# CIFAR-10 tensor cache
# ---------------------------------------------------------------------------------------------


def test_the_cifar_cache_is_reused_then_rebuilt_when_the_files_change(tmp_path):
    write_cifar10(tmp_path, per_batch=20, test_size=30, seed=1)
    first = cifar10(tmp_path, verify=False)
    cache = tmp_path / CIFAR_CACHE_NAME
    built = cache.stat().st_mtime_ns
    assert first.train_images.shape == (100, 3, 32, 32) and first.test_labels.shape == (30,)

    started = time.perf_counter()
    again = cifar10(tmp_path, verify=False)
    assert time.perf_counter() - started < 2
    assert cache.stat().st_mtime_ns == built and torch.equal(again.train_images, first.train_images)

    write_cifar10(tmp_path, per_batch=20, test_size=30, seed=2)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_1"
    os.utime(batch, ns=(batch.stat().st_atime_ns, batch.stat().st_mtime_ns + 1_000_000))  # even on a coarse clock
    changed = cifar10(tmp_path, verify=False)
    assert cache.stat().st_mtime_ns != built
    assert not torch.equal(changed.train_images, first.train_images)
    assert torch.equal(cifar10(tmp_path, verify=False).train_images, changed.train_images)


# ---------------------------------------------------------------------------------------------
# The speed benchmark's command line
# ---------------------------------------------------------------------------------------------


def test_the_speed_benchmark_runs_and_reports_its_figures():
    command = [sys.executable, "-m", "bench.train_speed", "--device", "cpu", "--train-size", "64", "--test-size", "32",
               "--batch-size", "32", "--epochs", "2", "--rounds", "1", "--wandb"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=Path(__file__).parent.parent)
    assert result.returncode == 0, result.stderr
    for figure in (r"ratio: +\d+\.\d\dx", r"takes \d+% of its training time: the same model work without it is at most \d+\.\d\dx",
                   r"overhead: +-?\d+\.\d%"):
        assert re.search(figure, result.stdout), f"{figure!r} not in:\n{result.stdout}"


def test_a_full_disk_ends_a_save_saying_where_and_leaves_no_partial_file(tmp_path: Path):
    # The temporary file is a link to /dev/full: every write to it fails with ENOSPC, as on a full disk.
    model = build_model("resnet18_cifar", pretrained=False)
    saves = {
        tmp_path / "model.pth": lambda path: train.save_model(model, path),
        tmp_path / "checkpoints" / "checkpoint-e1-b0.pt": lambda path: train.save_whole({"model": model.state_dict()}, path),
    }
    for path, save in saves.items():
        path.parent.mkdir(exist_ok=True)
        partial = path.with_name(f"{path.name}.partial")
        partial.symlink_to("/dev/full")
        with pytest.raises(train.DiskFull) as full:
            save(path)
        assert str(full.value) == f"no space left on {path.parent} (writing {path.name})"
        assert not partial.is_symlink() and not partial.exists() and not path.exists()
