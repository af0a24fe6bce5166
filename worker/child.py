"""A training child: `python -m worker.child`, spawned by a worker slot, one per job attempt.

It reads its job (a ChildSpec, worker/protocol.py) from stdin, reports over the pipe named by
TRAINBOARD_REPORT_FD, writes its output to the job's log (its stdout and stderr), and dies with
its worker. SIGTERM stops it at once; CHECKPOINT_SIGNAL after a checkpoint, with exit code 0.
Training on the CPU, it keeps under the memory ceiling its spec names (worker/memory.py).
"""

import os
import signal
import sys
import traceback

from app.lifetime import die_with_parent
from app.settings import JobFiles
from worker.protocol import CHECKPOINT_SIGNAL, ChildSpec, Failure
from worker.reporter import CheckpointRequest, PipeReporter, first_line

PARENT_PID_ENV = "TRAINBOARD_PARENT_PID"


def one_line(exc: BaseException) -> str:
    reason = first_line(exc)
    return reason if reason == type(exc).__name__ else f"{type(exc).__name__}: {reason}"


def main() -> int:
    # SIGKILL when the worker dies, so no orphan keeps a GPU busy.
    die_with_parent(int(os.environ.get(PARENT_PID_ENV, os.getppid())), signal.SIGKILL)
    # SIGTERM (cancel, worker shutdown) unwinds normally, so the W&B run is closed properly.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    # Before the slow imports: the signal's default action would end the process. The training
    # checkpoints where it is and returns without a result; the slot knows it asked.
    checkpoint_request = CheckpointRequest()
    signal.signal(CHECKPOINT_SIGNAL, checkpoint_request.ask)
    spec = ChildSpec.model_validate_json(sys.stdin.buffer.read())
    reporter = PipeReporter.from_environment()

    from worker import memory, train
    from worker.data import DataError
    from worker.nets import WeightsError
    from worker.train import DiskFull

    device = train.training_device(spec.params)
    memory.limit(spec.memory_ceiling, device.type)
    try:
        train.run(
            spec.params,
            name=spec.name,
            files=JobFiles(spec.job_dir),
            data_dir=spec.data_dir,
            cifar_verify=spec.cifar_verify,
            reporter=reporter,
            resume_from=spec.resume_from,
            checkpoint_request=checkpoint_request,
            wandb_group=spec.wandb_group,
            sweep_id=spec.sweep_id,
            max_histograms=spec.max_histograms,
        )
    except (DataError, WeightsError, DiskFull, memory.OutOfMemory) as exc:
        traceback.print_exc()
        reporter.report(Failure(reason=str(exc)))
        return 1
    except Exception as exc:
        traceback.print_exc()
        out_of_memory = memory.is_out_of_memory(exc)
        reporter.report(Failure(reason=memory.out_of_memory_reason(str(device)) if out_of_memory else one_line(exc)))
        return 1
    finally:
        sys.stdout.flush()
    reporter.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
