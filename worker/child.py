"""A training child: `python -m worker.child`, started by a worker slot, one process per job attempt.

It starts with the slot's environment and no job, imports the training, then reads its job (a
ChildSpec, worker/protocol.py) from stdin: a slot with a warm process started it ahead of the
claim, so the imports are done when the job comes. It trains that one job and exits. It reports
over the pipe named by TRAINBOARD_REPORT_FD, writes the job's output to the pipe named by
TRAINBOARD_OUTPUT_FD (what it printed before it had its job stays on its stdout), and dies with
its worker. SIGTERM stops it at once; CHECKPOINT_SIGNAL after a checkpoint, with exit code 0.
Training on the CPU, it keeps under the memory ceiling its spec names (worker/memory.py).
"""

import os
import signal
import sys
import traceback

from app import recipes
from app.lifetime import die_with_parent
from worker.protocol import CHECKPOINT_SIGNAL, ChildSpec, Failure
from worker.reporter import CheckpointRequest, PipeReporter, first_line

PARENT_PID_ENV = "TRAINBOARD_PARENT_PID"
OUTPUT_FD_ENV = "TRAINBOARD_OUTPUT_FD"


def one_line(exc: BaseException) -> str:
    reason = first_line(exc)
    return reason if reason == type(exc).__name__ else f"{type(exc).__name__}: {reason}"


def take_job(spec: ChildSpec) -> None:
    """Become the job's process: its environment, its scratch folder as the working directory, and
    from here on every byte of output (this process's and its subprocesses') on the job's pipe."""
    os.environ.update(spec.environment)
    os.chdir(spec.job_dir)
    output_fd = os.environ.pop(OUTPUT_FD_ENV, None)
    if output_fd is not None:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(int(output_fd), sys.stdout.fileno())
        os.dup2(int(output_fd), sys.stderr.fileno())
        os.close(int(output_fd))


def main() -> int:
    # SIGKILL when the worker dies, so no orphan keeps a GPU busy.
    die_with_parent(int(os.environ.get(PARENT_PID_ENV, os.getppid())), signal.SIGKILL)
    # SIGTERM (cancel, worker shutdown) unwinds normally, so the W&B run is closed properly.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    # Before the slow imports: the signal's default action would end the process. The training
    # checkpoints where it is and returns without a result; the slot knows it asked.
    checkpoint_request = CheckpointRequest()
    signal.signal(CHECKPOINT_SIGNAL, checkpoint_request.ask)

    # The slow part of a start (torch, torchvision, wandb: seconds on a CPU), before the job.
    from worker import memory, train
    from worker.context import Run
    from worker.data import DataError
    from worker.nets import WeightsError
    from worker.tracking import warm_up
    from worker.train import DiskFull

    warm_up()
    recipes.registry()  # the installed recipes' modules, imported before the job as well

    job = sys.stdin.buffer.read()
    if not job:
        return 0  # the slot stopped before it had a job for this process
    spec = ChildSpec.model_validate_json(job)
    take_job(spec)
    reporter = PipeReporter.from_environment()
    device = train.training_device(spec.params)
    memory.limit(spec.memory_ceiling, device.type)
    run = Run(spec, device=device, reporter=reporter, checkpoint_request=checkpoint_request)
    try:
        returned = run.recipe.train_function()(spec.params, run)
        run.finish(returned)
    except (DataError, WeightsError, DiskFull, memory.OutOfMemory) as exc:
        traceback.print_exc()
        run.fail()
        reporter.report(Failure(reason=str(exc)))
        return 1
    except Exception as exc:
        traceback.print_exc()
        run.fail()
        out_of_memory = memory.is_out_of_memory(exc)
        reporter.report(Failure(reason=memory.out_of_memory_reason(str(device)) if out_of_memory else one_line(exc)))
        return 1
    finally:
        sys.stdout.flush()
    reporter.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
