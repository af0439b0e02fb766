"""The supervisor behind ``fwd agent``: one task group, actors started in dependency order.

Channels are made here and each actor gets only its ends (STYLE.md 1-2):

    Discovery --LinkEvent--> tee --> Links      (attach/detach)
                                 \\-> Datapath   (interface names for rules)
    Api --DatapathCommand--> Datapath           (sole writer of BPF maps)
    Api --ListInterfaces-->  Links

SIGTERM/SIGINT cancel the group and the agent exits 0; an actor that fails or
returns on its own brings the group down and the agent exits 1.
"""

from __future__ import annotations

import functools
import gc
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import structlog
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectSendStream
from prometheus_client import CollectorRegistry

from fwd.policy import failsafe
from fwd import log as fwdlog
from fwd import systemd
from fwd.actors.confirm import Confirmer
from fwd.actors.datapath import Datapath
from fwd.actors.discovery import Discovery
from fwd.actors.events import Events
from fwd.actors.links import Links
from fwd.core.agentlock import AgentLock, AlreadyRunning
from fwd.metrics.grpc import GrpcMetrics
from fwd.actors.api import Api
from fwd.kernel import pins
from fwd.kernel.objects import BpfObject
from fwd.kernel.objpath import default_object_path
from fwd.kernel.ringbuf import RingBuffer, configure_events, kernel_event_stats
from fwd.kernel.rcu import RcuBarrier
from fwd.kernel.dataplane import Dataplane
from fwd.core.counters import SlotCounters
from fwd.kernel.bpffs import MOUNT_POINT, ensure, private_mount_namespace
from fwd.errors import FwdError
from fwd.actors.looplag import LoopLagMonitor
from fwd.messages import (
    Adoption,
    ConfirmCommand,
    DatapathCommand,
    EventsCommand,
    LinkEvent,
    ListInterfaces,
    ReadCounters,
    Reply,
    SlotNames,
    request,
)
from fwd.settings import Settings
from fwd.metrics.collector import Snapshot
from fwd.metrics.kernel import IF_STATS_MAP, read_if_stats
from fwd.actors.metrics import MetricsServer
from fwd.policy.model import Policy
from fwd.store import SqliteStore

if TYPE_CHECKING:
    from fwd.actors.cluster import ClusterMode

log = structlog.get_logger("fwd.agent")

PROGRAM = "fwd_xdp"


class ActorExited(FwdError):
    """An actor returned while the agent was meant to keep running."""


async def _actor(
    name: str,
    run: Callable[..., Awaitable[None]],
    *args: Any,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    await run(*args, task_status=task_status)
    raise ActorExited(f"actor {name} stopped unexpectedly")


async def _signals(scope: anyio.CancelScope) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as received:
        async for signum in received:
            log.info("shutdown_requested", signal=signal.Signals(signum).name)
            systemd.notify("STOPPING=1")
            scope.cancel()
            return


async def serve(
    settings: Settings, obj_path: Path | None = None, lock: AgentLock | None = None
) -> None:
    """Run every actor until cancelled; raises if one of them fails.

    ``lock`` holds the state directory; the pin directory is locked here too, once
    a bpffs is mounted above it (it could not be made before that).
    """
    bpffs = Path(settings.bpffs_dir) if settings.pin else None
    if bpffs is not None:
        _prepare_bpffs(bpffs)
        if lock is not None:
            lock.pin_dir(bpffs)
    else:
        log.warning("pinning_disabled", reason="--no-pin: enforcement ends with this agent")
    obj_path = obj_path or default_object_path()
    log.info("bpf_object", path=str(obj_path))
    with BpfObject.open(obj_path) as obj:
        configure_events(obj, rate=settings.event_rate, burst=settings.event_burst)
        kept = failsafe.entries(settings)
        failsafe.configure(obj, kept)
        log.info("failsafe", entries=[str(e) for e in kept])
        if bpffs is not None:
            reuse = pins.reuse_pinned(obj, bpffs)
        else:
            reuse = pins.MapReuse(created=tuple(sorted(n for n in obj.maps() if n[0] != ".")))
        for note in reuse.notes:
            log.warning("pinned_map_not_reused", reason=note)
        obj.load()
        prog = obj.program(PROGRAM)
        if bpffs is not None:
            # Never skipped silently: without pins a restart loses enforcement
            # (the README's promise), so an operator who wants that says --no-pin.
            try:
                pins.pin_object(obj, prog, bpffs, reuse)
            except (FwdError, OSError) as exc:
                raise FwdError(
                    f"pinning under --bpffs {bpffs} failed: {exc} (start with --no-pin to run "
                    "without pins: enforcement then ends with the agent)"
                ) from exc
            log.info("maps_pinned", reused=list(reuse.reused), created=list(reuse.created))
        maps = obj.maps()
        ncpus = next(iter(maps.values())).ncpus
        store = SqliteStore(settings.state_dir)
        barrier = RcuBarrier()
        ring = RingBuffer(maps["fwd_events"].fd)
        cluster: ClusterMode | None = None
        try:
            dataplane = Dataplane(maps, ncpus, barrier)
            # Every channel is bounded; who waits when one is full is said beside it.
            # Datapath -> Events: the slot -> rule id table after each change. The
            # Datapath waits; Events only swaps a table per message.
            names_tx, names_rx = anyio.create_memory_object_stream[SlotNames](16)
            # The Datapath's one inbox: Api, Confirmer, ClusterSync, Links (LinkChanged)
            # and the metrics collector (ReadCounters). Senders wait.
            dp_cmd_tx, dp_cmd_rx = anyio.create_memory_object_stream[DatapathCommand](64)
            datapath = Datapath(
                dataplane,
                store,
                names=names_tx,
                guard=lockout_guard(settings),
                force_dry_run=settings.force_dry_run,
                adoption=Adoption(reuse.reused, reuse.created, reuse.notes),
            )
            links = Links(
                prog_fd=prog.fd,
                include=settings.include,
                exclude=settings.exclude,
                pin_dir=bpffs,
                detach_on_exit=settings.detach_on_exit,
                datapath=dp_cmd_tx.clone(),  # LinkChanged before each attach
                reply_timeout=settings.reply_timeout,
            )
            discovery = Discovery()
            # Api/ClusterSync -> Links: the asker waits, within its reply deadline.
            ifreq_tx, ifreq_rx = anyio.create_memory_object_stream[ListInterfaces](64)
            # Discovery -> Links. Link events are never dropped: Discovery waits when
            # Links is busy, and overflow is handled where it belongs, at the netlink
            # socket (32 MiB; ENOBUFS ends in a full resync).
            ev_tx, ev_rx = anyio.create_memory_object_stream[LinkEvent](256)
            # Api -> Confirmer: the Api waits (Superseded is sent without waiting and may
            # be dropped when full: the next apply supersedes again).
            confirm_tx, confirm_rx = anyio.create_memory_object_stream[ConfirmCommand](64)
            confirmer = Confirmer(settings.state_dir)
            # Events: ev_cmd_tx is for the Api (Subscribe), names_tx for the Datapath (SlotNames).
            events = Events(ring, lambda: kernel_event_stats(maps["fwd_event_stats"]))
            # Api -> Events (Subscribe): the Api waits, within its reply deadline.
            ev_cmd_tx, ev_cmd_rx = anyio.create_memory_object_stream[EventsCommand](64)
            # A registry of our own: the process-wide default one would add
            # Python's GC and process metrics under names we do not own.
            registry = CollectorRegistry()
            loop_lag = LoopLagMonitor()
            if settings.cluster:
                # Lazily: local mode never loads the etcd client.
                from fwd.actors.cluster import ClusterMode

                cluster = ClusterMode(settings, dp_cmd_tx.clone(), ifreq_tx.clone())
            api = Api(
                datapath=dp_cmd_tx,
                links=ifreq_tx,
                settings=settings,
                confirmer=confirm_tx,
                events=ev_cmd_tx,
                metrics=GrpcMetrics(registry) if settings.metrics_addr else None,
                cluster=cluster.admin_tx if cluster else None,
                sync=cluster.sync_tx if cluster else None,
            )
            async with anyio.create_task_group() as tg:
                tg.start_soon(_signals, tg.cancel_scope)
                await tg.start(loop_lag.run)
                await tg.start(_actor, "datapath", datapath.run, dp_cmd_rx)
                await tg.start(_actor, "links", links.run, ev_rx, ifreq_rx)
                await tg.start(_actor, "events", events.run, ev_cmd_rx, names_rx)
                await tg.start(_actor, "discovery", discovery.run, ev_tx)
                # Ready means enforcing: every interface present now has XDP (or
                # failed). A driver that hangs delays readiness, not the agent.
                patience = max(settings.reply_timeout, 30.0)
                with anyio.move_on_after(patience) as waiting:
                    await links.wait_synced()
                if waiting.cancelled_caught:
                    log.warning("links_not_synced", waited_seconds=patience)
                # After the Datapath: a rollback due while the agent was down goes out at once.
                await tg.start(_actor, "confirmer", confirmer.run, confirm_rx, dp_cmd_tx.clone())
                if cluster is not None:  # after Datapath and Links: it feeds and asks them
                    await cluster.start(tg, _actor)
                await tg.start(_actor, "api", api.run)
                if settings.metrics_addr:
                    if_map = maps.get(IF_STATS_MAP)  # absent from objects built before it
                    if_stats = functools.partial(read_if_stats, if_map, ncpus) if if_map else None
                    metrics = MetricsServer(
                        settings.metrics_addr,
                        registry,
                        snapshot=lambda: Snapshot(
                            datapath.statistics(),
                            links.interfaces(),
                            links.statistics(),
                            discovery.statistics(),
                            events.statistics(),
                            loop_lag.statistics(),
                        ),
                        counters=functools.partial(
                            read_counters, dp_cmd_tx.clone(), settings.reply_timeout
                        ),
                        if_stats=if_stats,
                    )
                    await tg.start(_actor, "metrics", metrics.run)
                revision = datapath.statistics().revision
                # Everything made so far (modules, classes, actors) lives as long as
                # the agent: move it out of the cyclic GC's sight. A full collection
                # walks every tracked object with the loop held: under an event flood
                # full collections took 18-78 ms before, 5-25 ms with this (bench/events).
                gc.freeze()
                log.info(
                    "agent_ready",
                    node=cluster.node if cluster else None,
                    socket=settings.socket_path,
                    metrics=settings.metrics_addr,
                    prog_id=prog.id,
                    revision=revision,
                )
                systemd.notify(f"READY=1\nSTATUS=enforcing revision {revision}")
                tg.start_soon(systemd.watchdog)
        finally:
            if cluster is not None:
                await cluster.aclose()
            store.close()
            barrier.close()
            ring.close()


async def read_counters(
    datapath: MemoryObjectSendStream[DatapathCommand], timeout: float, slots: Sequence[int]
) -> Mapping[int, SlotCounters]:
    """The metrics collector's counter read: asked of the Datapath, which owns the maps."""

    def make(reply: MemoryObjectSendStream[Reply[Mapping[int, SlotCounters]]]) -> ReadCounters:
        return ReadCounters(tuple(slots), reply)

    return await request(datapath, make, timeout=timeout)


def _prepare_bpffs(pin_dir: Path) -> None:
    """Make sure ``pin_dir`` is on a bpffs, mounting one at /sys/fs/bpf if needed."""
    if ensure(pin_dir):
        private = private_mount_namespace()
        if private is False:
            log.info("bpffs_mounted", path=str(MOUNT_POINT), private_mount_namespace=False)
        else:
            # ip netns exec, unshare -m, a container (or we cannot tell): the mount, and
            # the pins in it, go away with this mount namespace, so a restart cannot adopt.
            log.warning(
                "bpffs_mounted", path=str(MOUNT_POINT), private_mount_namespace=private,
                note="pins last as long as this mount namespace; start the agent with "
                "'nsenter --net=...' rather than 'ip netns exec' to pin on the host's bpffs",
            )


def lockout_guard(settings: Settings) -> Callable[[Policy], None] | None:
    """The anti-lockout check for the Datapath (fwd/policy/failsafe.py: ``guard``), or None.

    Parsed at start: a bad --failsafe, --mgmt-prefix or --mgmt-service stops the
    agent with a message.
    """
    return failsafe.guard(settings, failsafe.entries(settings))


def run(settings: Settings, *, log_level: str = "info") -> int:
    """Entry point of ``fwd agent``: returns the process exit code."""
    # One agent per state, decided before anything is logged or touched: a second
    # agent says who runs in one line and exits, leaving links and pins alone.
    lock = AgentLock()
    try:
        lock.state_dir(settings.state_dir)
        if settings.pin and os.path.isdir(settings.bpffs_dir):
            lock.pin_dir(settings.bpffs_dir)  # else once serve() has the bpffs mounted
    except (AlreadyRunning, OSError) as exc:
        lock.close()
        what = exc if isinstance(exc, AlreadyRunning) else f"cannot lock the state: {exc}"
        print(f"fwd: {what}", file=sys.stderr)
        return 1
    fwdlog.configure(log_level)
    log.info("agent_starting", state_dir=settings.state_dir, bpffs=settings.bpffs_dir)
    try:
        anyio.run(serve, settings, None, lock)
    except BaseException as exc:  # noqa: BLE001 - the process boundary: log, exit code
        return _failed(exc)
    finally:
        lock.close()
    log.info("agent_stopped")
    return 0


def _failed(exc: BaseException) -> int:
    """Log why the agent stopped (each error of a group) and give the exit code."""
    if isinstance(exc, KeyboardInterrupt):
        log.info("agent_stopped", reason="interrupted")
        return 0
    errors = exc.exceptions if isinstance(exc, BaseExceptionGroup) else (exc,)
    for e in errors:
        if isinstance(e, BaseExceptionGroup):
            _failed(e)
        elif isinstance(e, FwdError):
            log.error("agent_failed", error=str(e), error_type=type(e).__name__)
        else:
            log.error("agent_crashed", error=str(e), error_type=type(e).__name__, exc_info=e)
    return 1
