"""Ray start-up, the dashboard's address and token, and the per-trial resource check."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from neuroreg.config import ConfigError

DASHBOARD_HOST = "127.0.0.1"
DASHBOARD_PORT = 8265


@dataclass
class RayInfo:
    started_here: bool
    """True when this process started a local Ray instance (and shuts it down at the end)."""
    startup_s: float
    dashboard_url: str | None
    token_auth: bool


def start_ray(address: str | None, num_cpus: int | None, dashboard: bool = True) -> RayInfo:
    """Reuse an initialised Ray (tests), connect to ``address``, or start a local cluster
    with the dashboard on 127.0.0.1:8265 (local only: it runs code for whoever reaches it).
    ``dashboard_url`` is where it really listens."""
    import ray

    t0 = time.perf_counter()
    reuse = running_local_cluster() if may_join(address, num_cpus) and not address else None
    if ray.is_initialized():
        started = False
        node = getattr(ray._private.worker, "_global_node", None)
        url = getattr(node, "webui_url", None) if node is not None else None
    elif address or reuse:
        if address and address not in ("auto", "local") and "://" not in address:
            _probe_address(address)
        # A live `ray start` cluster on this machine saves the start-up of a new instance.
        try:
            info = ray.init(address=address or reuse, log_to_driver=True)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise ConfigError("--address", f"cannot join the Ray cluster at {address or reuse}: "
                                           f"{str(e).splitlines()[0][:200]}{_token_hint()}") from None
        started = False
        url = info.dashboard_url
    else:
        with _minimal_agent(not dashboard):
            info = ray.init(
                # "local": always a new instance, never the cluster named in Ray's current-cluster
                # file, which outlives a cluster that died without `ray stop` (ray.init would hang).
                address="local",
                num_cpus=num_cpus,
                include_dashboard=dashboard,
                dashboard_host=DASHBOARD_HOST,
                # No explicit port: Ray takes 8265, or the next free one when another Ray
                # instance holds it (an explicit port would fail instead).
            )
        started = True
        url = info.dashboard_url if dashboard else None
    return RayInfo(started, time.perf_counter() - t0, _http(url), token_auth_enabled())


@contextmanager
def _minimal_agent(on: bool) -> Iterator[None]:
    """Without the dashboard, start Ray's per-node dashboard agent in its ``--minimal`` form.

    Why: the raylet does not report itself started until the agent is up, and the full agent
    also starts its gRPC and HTTP servers, retrying the HTTP port while another Ray instance on
    the machine holds it. bench/sweep_overhead.py's "Ray start" row measures the cut (README,
    Benchmarks). The agent still loads its
    modules; what goes is its servers: the job API and the metrics export of the nodes, which
    only the dashboard uses. Log streaming to the driver (log monitor) and runtime environments
    (their own agent) are separate processes. Ray picks the minimal agent where the dashboard's
    dependencies are missing (ray without [default]), asking
    ``ray._private.utils.get_dashboard_dependency_error``; answered here for this call only."""
    if not on:
        yield
        return
    import ray._private.utils as ray_utils

    original = ray_utils.get_dashboard_dependency_error
    ray_utils.get_dashboard_dependency_error = lambda: ImportError("neuroreg: --no-dashboard")
    try:
        yield
    finally:
        ray_utils.get_dashboard_dependency_error = original


def may_join(address: str | None, num_cpus: int | None) -> bool:
    """Whether start_ray may join a running cluster: --address, or none given and no
    --num-cpus (a live `ray start` on this machine is then joined, else a new one started)."""
    return address != "local" and (bool(address) or num_cpus is None)


def prepare_auth(address: str | None, num_cpus: int | None) -> str | None:
    """prepare_token_auth wherever start_ray may join a cluster, which is decided only after
    ``import ray``. A new local instance is unaffected: Ray turns the token mode on for it
    by itself. Returns where the token came from, or None."""
    return prepare_token_auth() if may_join(address, num_cpus) else None


def prepare_token_auth() -> str | None:
    """Send this machine's Ray token when joining a cluster, without hand-set variables.

    `ray start --head` (Ray >= 2.59) turns token authentication on, and a driver that does
    not set RAY_AUTH_MODE=token is refused (after ~20 s of retries). Ray reads the mode once,
    when it is imported, so this runs before ``import ray``: with a token at hand
    (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token) and no mode chosen, the mode
    becomes token. A cluster without authentication accepts such a driver too.
    Returns where the token came from, or None when nothing was changed."""
    import sys

    if "ray" in sys.modules or os.environ.get("RAY_AUTH_MODE"):
        return None
    source = token_source()
    if source is not None:
        os.environ["RAY_AUTH_MODE"] = "token"
    return source


def token_source() -> str | None:
    if os.environ.get("RAY_AUTH_TOKEN"):
        return "$RAY_AUTH_TOKEN"
    return str(token_path()) if token_path().is_file() else None


def _token_hint() -> str:
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        return "; RAY_AUTH_MODE=disabled is set: unset it if the cluster uses token authentication"
    where = token_source()
    if where is None:
        return ("; if the cluster uses token authentication (the default of `ray start` since Ray 2.59), "
                "set RAY_AUTH_TOKEN to the output of `ray get-auth-token` on the head node (or copy its "
                f"~/.ray/auth_token to {token_path()})")
    return (f"; if the cluster uses token authentication, the token in {where} is not its token: set "
            "RAY_AUTH_TOKEN to the output of `ray get-auth-token` on the head node")


def _probe_address(address: str, timeout_s: float = 5.0) -> None:
    """Fail within ``timeout_s`` when nothing answers at HOST:PORT (Ray itself retries for minutes)."""
    import socket

    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError("--address", f"{address!r} is not HOST:PORT (e.g. 10.0.0.5:6379), auto or local")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            return
    except OSError as e:
        raise ConfigError("--address", f"nothing answers at {address} within {timeout_s:g} s ({e.strerror or e}); "
                                       "start the head with `ray start --head` or fix the address") from None


def running_local_cluster(temp_dir: str | None = None, timeout_s: float = 1.0) -> str | None:
    """host:port of the `ray start` cluster named in Ray's current-cluster file, if its GCS
    answers within ``timeout_s``; None when there is none or it is dead (a stale file)."""
    import socket

    try:
        from ray._private.services import find_bootstrap_address

        addr = find_bootstrap_address(temp_dir)
    except Exception:  # no file, unreadable file, another Ray layout
        return None
    if not addr or ":" not in addr:
        return None
    host, _, port = addr.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            return addr
    except (OSError, ValueError):
        return None


def _http(url: str | None) -> str | None:
    if not url:
        return None
    return url if "://" in url else f"http://{url}"


def token_auth_enabled() -> bool:
    """Ray >= 2.59 turns token authentication on for local clusters unless RAY_AUTH_MODE=disabled."""
    try:
        from ray._private.authentication.authentication_utils import is_token_auth_enabled

        return bool(is_token_auth_enabled())
    except Exception:  # older Ray: no token authentication
        return os.environ.get("RAY_AUTH_MODE", "").lower() == "token"


def token_path() -> Path:
    """Where Ray keeps the token of clusters started on this machine (ray get-auth-token)."""
    if os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return Path(os.environ["RAY_AUTH_TOKEN_PATH"])
    return Path.home() / ".ray" / "auth_token"


def dashboard_help(info: RayInfo) -> str:
    if not info.dashboard_url:
        return "Ray dashboard: off"
    lines = [f"Ray dashboard: {info.dashboard_url}"]
    if info.token_auth:
        src = "$RAY_AUTH_TOKEN" if os.environ.get("RAY_AUTH_TOKEN") else str(token_path())
        lines.append(
            f"  token authentication is on: paste the token when the page asks for it; print it with "
            f"`ray get-auth-token` (it is stored in {src})"
        )
    port = info.dashboard_url.rsplit(":", 1)[-1].strip("/") or str(DASHBOARD_PORT)
    lines.append(f"  from another machine: ssh -L {port}:127.0.0.1:{port} <this host>, then open http://127.0.0.1:{port}")
    return "\n".join(lines)


def check_resources(
    cpus_per_trial: float, gpus_per_trial: float, footprint: object | None = None
) -> dict[str, float]:
    """Fail fast when no node of the cluster can ever hold one trial (Tune would wait forever).

    ``footprint`` (neuroreg.footprint.estimate_for of the largest trial): with a GPU share,
    a packing whose share of every GPU the cluster reports is smaller than the estimate is
    refused, naming the numbers and the share that fits. GPUs whose memory Ray does not
    report (no known accelerator_type) are not judged.
    """
    import ray

    total = ray.cluster_resources()
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive", True)]
    cpus, gpus = float(total.get("CPU", 0.0)), float(total.get("GPU", 0.0))
    if gpus_per_trial > 0 and gpus == 0:
        raise ConfigError(
            "--gpus-per-trial",
            f"asks for {gpus_per_trial} GPU per trial but the Ray cluster has no GPU; "
            "use --gpus-per-trial 0 or connect to a GPU cluster with --address",
        )
    fits = [
        n for n in nodes
        if float(n.get("CPU", 0.0)) >= cpus_per_trial and float(n.get("GPU", 0.0)) >= gpus_per_trial
    ]
    if not fits:
        biggest = max(((float(n.get("CPU", 0)), float(n.get("GPU", 0))) for n in nodes), default=(0.0, 0.0))
        field = "--cpus-per-trial" if cpus_per_trial > biggest[0] else "--gpus-per-trial"
        raise ConfigError(
            field,
            f"a trial needs {cpus_per_trial} CPU and {gpus_per_trial} GPU on one node, but the largest "
            f"node has {biggest[0]:g} CPU and {biggest[1]:g} GPU (cluster total {cpus:g} CPU, {gpus:g} GPU); "
            "lower the request (fractions are allowed) or add nodes",
        )
    if footprint is not None and gpus_per_trial > 0:
        from neuroreg.footprint import packing_problem

        problem = packing_problem(footprint, gpus_per_trial, fits)
        if problem:
            raise ConfigError("--gpus-per-trial", problem)
    return {"CPU": cpus, "GPU": gpus}


def check_node_paths(paths: dict[str, str], timeout_s: float = 120.0) -> None:
    """Every node of a joined cluster holds the files trials read (data roots, recordings,
    weights) at the same absolute path; else exit 2 naming the node, before any training.
    ``paths``: config key -> absolute path."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n for n in ray.nodes() if n.get("Alive") and float(n.get("Resources", {}).get("CPU", 0)) > 0]
    if not paths or not nodes:
        return
    probe = ray.remote(num_cpus=0)(_missing_paths)
    refs = [probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
            .remote(paths) for n in nodes]
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
    for node, ref in zip(nodes, refs):
        if ref not in ready:
            continue  # a node too busy to answer is not proof of a missing file
        for key, path in ray.get(ref).items():
            flag = "--data-root" if key.endswith("data.root") else key
            raise ConfigError(flag, f"node {node.get('NodeManagerAddress')} ({node['NodeID'][:8]}) has no {path}; "
                                    "every node needs the same files at the same absolute path")


def _missing_paths(paths: dict[str, str]) -> dict[str, str]:
    return {k: p for k, p in paths.items() if not os.path.exists(p)}


def default_concurrency(
    resources: dict[str, float], cpus_per_trial: float, gpus_per_trial: float, autoscaling_trials: int | None = None
) -> int:
    """How many trials fit at once (at least 1).

    ``autoscaling_trials``: the sweep's trial count on an autoscaling cluster, whose present
    nodes (often 0 GPUs) say nothing about what it will hold: every trial is queued at once,
    so the autoscaler sees the whole demand instead of one trial's."""
    if autoscaling_trials is not None:
        return max(1, autoscaling_trials)
    n = resources["CPU"] / cpus_per_trial
    if gpus_per_trial > 0:
        n = min(n, resources["GPU"] / gpus_per_trial)
    return max(1, int(n + 1e-9))
