"""Launch a stage's sky.Task, stream its logs line by line, and sort failures into what to do next.

Design choices:
- The SkyPilot 0.14 SDK is asynchronous: `sky.launch` returns a request id (auto-starting a local
  API server when none is configured), `sky.stream_and_get` streams provisioning and returns
  (job_id, handle), `sky.tail_logs(follow=True)` streams the job and returns its exit code
  (0 ok, 100 failed, 101 unfinished, 103 cancelled), `sky.job_status` names the final state and
  `sky.down` tears down. This module is the same sequence `sky launch` runs, minus the prompts.
- Every failure leaves as one of three errors, so a caller (a Prefect task) can decide mechanically:
  SkyRetryableError (capacity, preemption, transient provisioning: try again later),
  SkyJobFailedError (the stage itself failed: carries the last log lines; retrying will not help),
  SkyNotConfiguredError (no enabled cloud, bad credentials, no network: a person must run `sky check`).
  Anything else from SkyPilot is a plain SkyLaunchError. `classify_error` is the whole mapping.
- Retries here are bounded and only for SkyRetryableError; the cluster is torn down once, at the end,
  when asked (and `down=` is also passed to sky.launch, so SkyPilot's autodown still removes the
  cluster if this process dies mid-run).
- Logs reach the callback as whole lines without ANSI colour codes; carriage-return progress updates
  count as lines. The last lines are kept for the error message of a failed job.
"""

from __future__ import annotations

import io
import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import sky
from sky import exceptions as sky_exc

# Exit codes of sky.tail_logs (sky.exceptions.JobExitCode).
_EXIT_OK = int(sky_exc.JobExitCode.SUCCEEDED)
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
_NETWORK_ERRORS = ("ConnectionError", "NameResolutionError", "NewConnectionError", "MaxRetryError", "SSLError")
_TIMEOUTS = ("Timeout",)  # requests' ReadTimeout / ConnectTimeout, urllib3's *TimeoutError
# How SkyPilot words "the cloud this needs is switched off" (optimizer.py, data/storage.py).
_DISABLED_CLOUD = re.compile(r"access is disabled|(?:is|are) not enabled|credentials are not configured", re.IGNORECASE)
SKY_CHECK_HINT = "run `sky check` on the launching machine to see which clouds are enabled and why not"


class SkyLaunchError(RuntimeError):
    """A stage could not be run through SkyPilot; `cause` is SkyPilot's own exception, if any."""

    def __init__(self, message: str, *, cause: BaseException | None = None):
        super().__init__(message)
        self.cause = cause


class SkyRetryableError(SkyLaunchError):
    """No capacity, a preempted or lost cluster, or a transient provisioning failure: try again later."""


class SkyNotConfiguredError(SkyLaunchError):
    """SkyPilot cannot reach any cloud from here (no credentials, no enabled cloud, no network)."""


class SkyJobFailedError(SkyLaunchError):
    """The stage ran and failed (or was cancelled); `log_tail` holds the job's last log lines."""

    def __init__(self, message: str, *, job_id: int | None, status: str, log_tail: list[str]):
        super().__init__(message)
        self.job_id = job_id
        self.status = status
        self.log_tail = log_tail


@dataclass
class LaunchResult:
    """A stage job that finished successfully."""

    cluster_name: str
    job_id: int
    attempts: int
    seconds: float
    log_tail: list[str] = field(default_factory=list)


class _LineStream(io.TextIOBase):
    """A text stream that hands complete lines to a callback and remembers the last few."""

    def __init__(self, sink: Callable[[str], None], keep: int):
        super().__init__()
        self._sink = sink
        self._partial = ""
        self.tail: deque[str] = deque(maxlen=keep)

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._partial += text
        *lines, self._partial = re.split(r"\r\n|\r|\n", self._partial)
        for line in lines:
            self._emit(line)
        return len(text)

    def finish(self) -> None:
        """Emit a last line that had no newline."""
        if self._partial:
            self._emit(self._partial)
            self._partial = ""

    def _emit(self, line: str) -> None:
        line = _ANSI.sub("", line).rstrip()
        if line.strip():
            self.tail.append(line)
            self._sink(line)


def _is_network_cloud_error(exc: sky_exc.CloudError, names: tuple[str, ...]) -> bool:
    # SkyPilot's server wraps foreign exceptions (requests, urllib3, cloud SDKs) into CloudError,
    # keeping the original class name in error_type.
    return exc.cloud_provider in ("requests", "urllib3") and any(n in exc.error_type for n in names)


def classify_error(exc: BaseException) -> SkyLaunchError | None:
    """Map a SkyPilot exception to SkyRetryableError / SkyNotConfiguredError / SkyLaunchError.

    Returns None for exceptions that do not come from SkyPilot (they propagate unchanged).
    """
    if isinstance(exc, SkyLaunchError):
        return exc
    msg = _ANSI.sub("", str(exc)).strip() or type(exc).__name__
    not_configured = (
        sky_exc.NoCloudAccessError,
        sky_exc.CloudUserIdentityError,
        sky_exc.InvalidCloudCredentials,
        sky_exc.InvalidCloudConfigs,
        sky_exc.InvalidSkyPilotConfigError,
        sky_exc.ApiServerAuthenticationError,
        sky_exc.PermissionDeniedError,
    )
    if isinstance(exc, not_configured):
        return SkyNotConfiguredError(f"SkyPilot has no usable cloud ({msg}); {SKY_CHECK_HINT}", cause=exc)
    if isinstance(exc, sky_exc.ApiServerConnectionError):
        return SkyNotConfiguredError(
            f"cannot reach the SkyPilot API server ({msg}); check `sky api info`, then {SKY_CHECK_HINT}", cause=exc
        )
    if isinstance(exc, sky_exc.CloudError) and _is_network_cloud_error(exc, _TIMEOUTS):
        return SkyRetryableError(f"network timeout while launching: {msg}", cause=exc)
    if isinstance(exc, sky_exc.CloudError) and _is_network_cloud_error(exc, _NETWORK_ERRORS):
        # Typically the resource catalog download failing: this machine has no internet access.
        return SkyNotConfiguredError(
            f"SkyPilot could not reach the network from this machine ({msg}); launching needs internet "
            f"access and cloud credentials; {SKY_CHECK_HINT}",
            cause=exc,
        )
    if isinstance(exc, sky_exc.KubeAPIUnreachableError):
        return SkyRetryableError(f"the Kubernetes API is unreachable right now: {msg}", cause=exc)
    if isinstance(exc, sky_exc.ResourcesUnavailableError):
        return _unavailable(exc, msg)
    retryable = (
        sky_exc.ClusterNotUpError,
        sky_exc.ClusterDoesNotExist,
        sky_exc.ClusterSetUpError,
        sky_exc.CommandError,
        sky_exc.FetchClusterInfoError,
        sky_exc.ServerTemporarilyUnavailableError,
        sky_exc.ExecutionRetryableError,
        sky_exc.NetworkError,
    )
    if isinstance(exc, retryable):
        return SkyRetryableError(f"cluster provisioning or connection failed ({type(exc).__name__}): {msg}", cause=exc)
    if type(exc).__module__.startswith("sky"):
        return SkyLaunchError(f"SkyPilot failed ({type(exc).__name__}): {msg}", cause=exc)
    return None


def _unavailable(exc, msg: str) -> SkyLaunchError:
    if _DISABLED_CLOUD.search(msg):
        # Raised before any attempt when the task needs a cloud (e.g. a gs:// mount) that is off.
        return SkyNotConfiguredError(f"a cloud this task needs is not enabled ({msg}); {SKY_CHECK_HINT}", cause=exc)
    if not exc.failover_history:
        # Empty history: the optimizer found no offering at all, which waiting will not change.
        return SkyLaunchError(
            f"no enabled cloud offers the requested resources ({msg}); check compute.accelerators/"
            "cloud/region against `sky gpus list`",
            cause=exc,
        )
    return SkyRetryableError(f"no capacity for the requested resources right now: {msg}", cause=exc)


def _job_id_of(result: Any) -> int | None:
    # The launch request returns (job_id, handle), or (job_id, handle, credentials) when asked.
    if isinstance(result, tuple) and result:
        return result[0]
    return None


def _job_status(cluster_name: str, job_id: int) -> str:
    statuses = sky.get(sky.job_status(cluster_name, [job_id]))
    status = statuses.get(job_id, statuses.get(str(job_id)))  # type: ignore[call-overload]
    return "UNKNOWN" if status is None else str(getattr(status, "value", status))


def _wait_until_terminal(cluster_name: str, job_id: int, poll_s: float) -> str:
    """The job's final status, polling while it is still pending or running."""
    terminal = {s.value for s in sky.JobStatus if s.is_terminal()}
    while True:
        status = _job_status(cluster_name, job_id)
        if status in terminal:
            return status
        time.sleep(poll_s)


def _run_once(task: sky.Task, cluster_name: str, stream: _LineStream, teardown: bool, poll_s: float) -> int:
    """One launch + log stream; returns the job id or raises SkyPilot's exception / SkyJobFailedError."""
    request_id = sky.launch(task, cluster_name=cluster_name, down=teardown)
    job_id = _job_id_of(sky.stream_and_get(request_id, output_stream=stream))
    if job_id is None:
        raise SkyLaunchError(f"SkyPilot provisioned {cluster_name} but submitted no job (does the task have a run?)")
    exit_code = sky.tail_logs(cluster_name, job_id, follow=True, output_stream=stream)
    stream.finish()
    if exit_code == _EXIT_OK:
        return job_id
    # Exit code 101 means the log stream ended before the job did (e.g. a dropped connection).
    status = _wait_until_terminal(cluster_name, job_id, poll_s)
    if status == sky.JobStatus.SUCCEEDED.value:
        return job_id
    tail = list(stream.tail)
    shown = "\n".join(f"  | {line}" for line in tail[-20:]) or "  (no log lines were received)"
    raise SkyJobFailedError(
        f"stage job {job_id} on {cluster_name} ended {status} (exit code {exit_code}); last log lines:\n{shown}",
        job_id=job_id,
        status=status,
        log_tail=tail,
    )


def _teardown(cluster_name: str, stream_logs: Callable[[str], None]) -> BaseException | None:
    """Tear the cluster down; a cluster that never came up is fine. Returns the error, if any."""
    try:
        sky.get(sky.down(cluster_name))
        stream_logs(f"tore down cluster {cluster_name}")
    except sky_exc.ClusterDoesNotExist:
        pass
    except Exception as exc:  # noqa: BLE001 - reported to the caller, never swallowed silently
        stream_logs(f"FAILED to tear down cluster {cluster_name}: {exc}; run `sky down {cluster_name}`")
        return exc
    return None


def launch_stage(
    task: sky.Task,
    cluster_name: str,
    *,
    stream_logs: Callable[[str], None],
    teardown: bool,
    retries: int = 0,
    retry_wait_s: float = 60.0,
    poll_s: float = 10.0,
    keep_lines: int = 200,
) -> LaunchResult:
    """Run `task` on cluster `cluster_name` until its job ends; stream every log line to `stream_logs`.

    Retries up to `retries` more times after a SkyRetryableError, waiting `retry_wait_s` between
    attempts. With `teardown`, the cluster is torn down at the end whatever happened.
    Raises SkyRetryableError, SkyJobFailedError, SkyNotConfiguredError or SkyLaunchError.
    """
    start = time.monotonic()
    stream = _LineStream(stream_logs, keep_lines)
    outcome: BaseException | None = None
    try:
        for attempt in range(1, retries + 2):
            try:
                job_id = _run_once(task, cluster_name, stream, teardown, poll_s)
                return LaunchResult(cluster_name, job_id, attempt, time.monotonic() - start, list(stream.tail))
            except Exception as exc:
                stream.finish()
                mapped = classify_error(exc)
                if mapped is None:
                    raise
                if isinstance(mapped, SkyRetryableError) and attempt <= retries:
                    stream_logs(f"attempt {attempt} failed, retrying in {retry_wait_s:.0f} s: {mapped}")
                    time.sleep(retry_wait_s)
                    continue
                if mapped is exc:
                    raise
                raise mapped from exc
        raise AssertionError("unreachable: the last attempt returns or raises")
    except BaseException as exc:
        outcome = exc
        raise
    finally:
        if teardown:
            failure = _teardown(cluster_name, stream_logs)
            if failure is not None and outcome is None:
                # A successful stage whose cluster keeps billing is not a success to report quietly.
                raise SkyLaunchError(f"the stage succeeded but cluster {cluster_name} is still up", cause=failure)


def main(argv: list[str] | None = None) -> int:
    """`python -m tasks.skypilot_launch STAGE key=value ...`: run one stage on a SkyPilot cluster.

    Exit codes: 0 done, 1 the stage failed, 2 SkyPilot is not set up here, 3 no capacity after
    the retries, 4 any other launch failure.
    """
    import argparse
    import sys

    from tasks.skypilot_task import build_sky_task, default_cluster_name, stage_command
    from wrinklefree_core.config import compose

    parser = argparse.ArgumentParser(prog="python -m tasks.skypilot_launch", description=main.__doc__)
    parser.add_argument("stage")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--cluster", help="cluster name (default: wf-<stage>-<random>)")
    parser.add_argument("--retries", type=int, default=2, help="extra attempts when capacity is missing")
    args = parser.parse_args(argv)
    command, stage_args = stage_command(args.stage, args.overrides)
    cfg = compose(command, stage_args)
    task = build_sky_task(cfg, args.stage, args.overrides)
    cluster = args.cluster or default_cluster_name(args.stage)
    try:
        result = launch_stage(
            task, cluster, stream_logs=print, teardown=cfg.compute.teardown, retries=args.retries
        )
    except SkyJobFailedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except SkyNotConfiguredError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except SkyRetryableError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    except SkyLaunchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 4
    print(f"stage {args.stage} finished: job {result.job_id} on {result.cluster_name} in {result.seconds:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
