"""A warm driver for `exec` on the cluster of `tender-ray up`: the exec server.

Starting `exec` on a running cluster costs a fresh Python importing Ray and tender_ray and
connecting a driver (seconds); starting the program is a few actor calls. So `up` starts this
server beside its state file (its pid and Unix socket in the state; `down` ends it by pid). The
server keeps one *warm driver* ready: a Python process that has imported exec's code and Ray and
joined the cluster. `tender-ray exec --address auto|ADDR` (the cluster of `up`) first connects to
the socket, without importing Ray:

    client ── "E" ──► server: queues the connection; once a driver is warm, hands the
                      connection to it (SCM_RIGHTS) and starts the next driver at once
    client ── "A" + its fds 0/1/2, argv, cwd, environment, umask ──► driver
    driver ── "S" ──► client: taken; from now on the client passes on the signals it gets
    client ── "K" signal ──► driver: raised in the driver itself, so exec's own handlers run
    driver ── "X" status ──► client: exec's exit status, which the client exits with

The driver dup2()s the client's descriptors onto its 0/1/2, takes its cwd and environment and
runs `tender-ray exec` through `cli.main.main` with the client's argv: the same code, messages
and statuses as the CLI's own (a closed stdout gives the program EPIPE, `| head` 141), on the
cluster it joined while warming. Anything that fails before the driver takes the program (no
server answers, a stale socket, no driver can join) makes the client say so in one line and run
exec the usual way. A client that goes away takes its driver along, as it would its own.
`TENDER_EXEC_SERVER=off` in the environment skips the server. The server ends on SIGTERM
(`down`), when the state file no longer names it, or when driver after driver finds no
cluster at the address (its head stopped without `down`); its warm driver goes with it.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import socket
import struct
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tender_ray.cli.operate import ClusterState

# The signals exec passes on to its program (execute.FORWARDED, which loads Ray): the client
# passes the same ones to the driver.
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
             signal.SIGUSR2, signal.SIGWINCH)
EXEC_FAILED = 125  # status.EXEC_FAILED
HEADER = struct.Struct(">cI")  # a message: its kind (one byte), the payload's length
STOP_PATIENCE = 10.0  # seconds the server (or an unused driver) gets to end after SIGTERM
RETRY_FIRST, RETRY_MOST = 1.0, 60.0  # seconds before warming another driver after a failure
LISTEN_BACKLOG = 64
GONE_AFTER = 5  # drivers in a row finding no cluster: the server ends (about a minute)

DRIVING = False  # set in a warm driver: its `exec` is the one the client handed over


class ServerError(Exception):
    """The exec server could not start."""


# --- messages ---------------------------------------------------------------------------------

def send(sock: socket.socket, kind: bytes, payload: bytes = b"", fds: Sequence[int] = ()
         ) -> None:
    data = HEADER.pack(kind, len(payload)) + payload
    if fds:
        sent = socket.send_fds(sock, [data], list(fds))
        if sent < len(data):
            sock.sendall(data[sent:])
    else:
        sock.sendall(data)


def _exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        more = sock.recv(n - len(data))
        if not more:
            raise ConnectionError("the other end closed the connection")
        data += more
    return data


def receive(sock: socket.socket) -> tuple[bytes, bytes, list[int]]:
    """The next message: (kind, payload, descriptors passed with it)."""
    head, fds, _, _ = socket.recv_fds(sock, HEADER.size, 8)
    if not head:
        raise ConnectionError("the other end closed the connection")
    head += _exactly(sock, HEADER.size - len(head))
    kind, length = HEADER.unpack(head)
    return kind, _exactly(sock, length), fds


# --- the client: `exec` handing its program to a warm driver ----------------------------------

def socket_path(state_file: Path) -> Path:
    """Where the server of the cluster whose state is `state_file` listens: beside it."""
    return state_file.with_name(state_file.stem + ".exec.sock")


def _notice(line: str) -> None:
    with contextlib.suppress(OSError):
        print(f"tender-ray: notice: {line}", file=sys.stderr, flush=True)


class _Stopped(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def through_server(address: str, argv: Sequence[str],
                   log_phases: Callable[[dict[str, float]], None] | None = None) -> int | None:
    """Run `tender-ray exec` (its whole command line `argv`) through the warm driver of the
    cluster of `up` that `address` names (auto, or its address): exec's exit status; None when
    there is no server to ask, or it could not take the program (said in one line): exec then
    runs the usual way. `log_phases` is given where the client's seconds went."""
    from tender_ray.cli.operate import ClusterState, state_path
    from tender_ray.errors import UsageError

    if DRIVING or os.environ.get("TENDER_EXEC_SERVER", "").lower() in ("off", "0", "no"):
        return None
    if not state_path().is_file():
        return None
    try:
        state = ClusterState.load()
    except UsageError:
        return None  # exec's usual path says what is wrong with it
    if address not in ("auto", state.address) or not state.exec_socket:
        return None
    path = state.exec_socket
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
        connected = time.monotonic()
        started_cpu = time.process_time()  # the client's own CPU seconds until here
    except OSError as exc:
        sock.close()
        _notice(f"the exec server at {path} does not answer ({exc.strerror or exc}); "
                "starting exec the usual way")
        return None
    started = False
    last: list[int] = []

    def caught(signum: int, frame: object) -> None:
        if not started:
            if signum != signal.SIGWINCH:
                raise _Stopped(signum)
            return
        last.append(signum)
        with contextlib.suppress(OSError):
            send(sock, b"K", struct.pack(">i", signum))

    previous = {sig: signal.signal(sig, caught) for sig in FORWARDED}
    try:
        open_fds = [fd for fd in (0, 1, 2) if _is_open(fd)]
        request = {"argv": list(argv), "cwd": os.getcwd(), "env": dict(os.environ),
                   "umask": _umask(), "fds": open_fds}
        try:
            sock.sendall(b"E")
            send(sock, b"A", json.dumps(request).encode(), open_fds)
        except OSError:
            pass  # refused at once (no driver can join): the server's reason follows
        while True:
            try:
                kind, payload, _ = receive(sock)
            except OSError as exc:
                if not started:
                    _notice(f"the exec server at {path} closed the connection ({exc}); "
                            "starting exec the usual way")
                    return None
                if last:  # the driver died of the signal passed on: so does exec
                    signal.signal(last[-1], signal.SIG_DFL)
                    os.kill(os.getpid(), last[-1])
                _say(f"tender-ray: error: the exec server's driver ended without an exit "
                     f"status ({exc}); its log is beside {path}")
                return EXEC_FAILED
            if kind == b"F" and not started:
                _notice(f"the exec server could not take the program "
                        f"({payload.decode(errors='replace')}); starting exec the usual way")
                return None
            if kind == b"S":
                started = True
                taken = time.monotonic()
            elif kind == b"X":
                # Where the client's seconds went (logged at info: `bench start` reads it).
                if log_phases is not None:
                    log_phases({"start": round(_age(connected), 4),
                                "start_cpu": round(started_cpu, 4),
                                "handover": round(taken - connected, 4),
                                "run": round(time.monotonic() - taken, 4)})
                return int(struct.unpack(">i", payload)[0])
    except _Stopped as exc:
        _say(f"tender-ray: stopped by {signal.Signals(exc.signum).name} before the program "
             "started")
        return 128 + exc.signum
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sock.close()


def log_client_phases(phases: dict[str, float]) -> None:
    """The client's `exec client phases` line, only at info or below: structlog would cost
    every served exec's start a tenth of a second for a line nobody asked for."""
    if os.environ.get("TENDER_LOG_LEVEL", "warning").lower() in ("debug", "info"):
        from tender_ray import logs

        logs.get("exec").info("exec client phases", **phases)


def _say(line: str) -> None:
    with contextlib.suppress(OSError):
        print(line, file=sys.stderr, flush=True)


def _age(at: float) -> float:
    """Seconds from this process's start to the moment `at` (time.monotonic())."""
    try:
        fields = Path("/proc/self/stat").read_text().rpartition(")")[2].split()
        born = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # starttime, since boot
    except (OSError, ValueError, IndexError):
        return 0.0
    return at - (time.clock_gettime(time.CLOCK_BOOTTIME) - time.monotonic()) - born


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def query(path: str | os.PathLike[str], timeout: float = 5.0) -> str:
    """What the server at `path` says of itself: "warm", "warming", or why no driver runs."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(os.fspath(path))
        sock.sendall(b"Q")
        _, payload, _ = receive(sock)
    return payload.decode(errors="replace")


# --- `up` and `down`: starting and ending the server ---------------------------------------------

def start_server(state_file: Path) -> tuple[int, str]:
    """Start the exec server of the cluster whose state is `state_file` (already written), in
    a session of its own; (pid, socket path) once it listens. ServerError when it cannot."""
    path = socket_path(state_file)
    if len(os.fsencode(path)) > 107:  # sun_path's size
        raise ServerError(f"its socket path {path} is too long for a Unix socket")
    log = state_file.with_name(state_file.stem + ".exec.log")
    env = {**os.environ, "TENDER_STATE": str(state_file)}
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "tender_ray.cli.exec_server", "serve",
                                 str(path)], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=out, env=env, start_new_session=True, cwd="/")
    assert proc.stdout is not None
    line = proc.stdout.readline()  # "listening", or nothing when it failed
    proc.stdout.close()
    if line.strip() != b"listening":
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(STOP_PATIENCE)
        raise ServerError(f"it did not start (see {log})")
    return proc.pid, str(path)


def start_for(state: ClusterState) -> str:
    """Start the exec server of the cluster `up` has just started and recorded in `state`, and
    record the server there too; the line `up` prints about it."""
    from tender_ray.cli.operate import state_path

    try:
        state.exec_server_pid, state.exec_socket = start_server(state_path())
    except (ServerError, OSError) as exc:
        return f"exec server: not started ({exc}); `exec` joins the cluster itself"
    state.save()
    return (f"exec server: pid {state.exec_server_pid} on {state.exec_socket} (`exec` on "
            f"this cluster starts programs through its warm driver)")


def _is_server(pid: int, path: str | None) -> bool:
    """Whether `pid` is still the exec server `up` started (not a process that took its pid)."""
    try:
        words = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"tender_ray.cli.exec_server" in words and (path is None or
                                                        os.fsencode(path) in words)


def stop_server(pid: int, path: str | None) -> None:
    """End the exec server `up` started (its warm driver goes with it; drivers running a
    program go on until it ends, as an `exec` of their own would)."""
    if not _is_server(pid, path):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_PATIENCE
    while _is_server(pid, path) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _is_server(pid, path):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if path:
        with contextlib.suppress(OSError):
            os.unlink(path)


# --- the server -------------------------------------------------------------------------------

@dataclass
class _Driver:
    proc: subprocess.Popen[bytes]
    channel: socket.socket  # the server's end of the driver's socket pair
    ready: bool = False


def _log(event: str) -> None:
    """A line in the server's log (its stderr, beside the state file)."""
    with contextlib.suppress(OSError, ValueError):
        print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} exec server {os.getpid()}: {event}",
              file=sys.stderr, flush=True)


class Server:
    """Accepts clients on the socket, keeps one warm driver, hands each client to it."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.state_file = Path(os.environ["TENDER_STATE"])
        self.selector = selectors.DefaultSelector()
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # a stale socket of a server that is gone
        self.listener.bind(path)
        self.listener.listen(LISTEN_BACKLOG)
        self.selector.register(self.listener, selectors.EVENT_READ, "listener")
        self.driver: _Driver | None = None
        self.waiting: deque[socket.socket] = deque()
        self.used: list[subprocess.Popen[bytes]] = []  # drivers running a client's program
        self.why = "warming"  # what a client is told when no driver can take it
        self.retry_at = 0.0
        self.retry = RETRY_FIRST
        self.unreachable = 0  # drivers in a row that found no cluster at the address

    def run(self) -> None:
        while self._cluster_is_mine() and self.unreachable < GONE_AFTER:
            if self.driver is None and time.monotonic() >= self.retry_at:
                self._warm()
            for key, _ in self.selector.select(timeout=0.5):
                if key.data == "listener":
                    with contextlib.suppress(OSError):
                        conn, _ = self.listener.accept()
                        self.selector.register(conn, selectors.EVENT_READ, "client")
                elif key.data == "client":
                    self._client(key.fileobj)  # type: ignore[arg-type]
                elif key.data == "driver":
                    self._from_driver()
            self._hand_over()
            self.used = [p for p in self.used if p.poll() is None]

    def _cluster_is_mine(self) -> bool:
        """Whether the state file still names this server (`down` removes it)."""
        try:
            state = json.loads(self.state_file.read_text())
        except OSError:
            return False
        except ValueError:
            return True  # being rewritten just now
        return bool(state.get("exec_server_pid") in (None, os.getpid()))

    def _warm(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        proc = subprocess.Popen([sys.executable, "-m", "tender_ray.cli.exec_server", "driver",
                                 str(theirs.fileno())], pass_fds=(theirs.fileno(),),
                                stdin=subprocess.DEVNULL, stdout=sys.stderr, stderr=sys.stderr)
        theirs.close()
        _log(f"warming driver {proc.pid}")
        self.driver = _Driver(proc, ours)
        self.selector.register(ours, selectors.EVENT_READ, "driver")

    def _client(self, conn: socket.socket) -> None:
        self.selector.unregister(conn)
        try:
            mode = conn.recv(1)
        except OSError:
            mode = b""
        if mode == b"E" and self.driver is None:  # the last one failed: no waiting for the next
            with contextlib.suppress(OSError):
                send(conn, b"F", self.why.encode())
        elif mode == b"E":
            self.waiting.append(conn)
            return
        if mode == b"Q":
            said = "warm" if self.driver and self.driver.ready else self.why
            with contextlib.suppress(OSError):
                send(conn, b"I", said.encode())
        conn.close()

    def _from_driver(self) -> None:
        assert self.driver is not None
        try:
            data = self.driver.channel.recv(4096)
        except OSError:
            data = b""
        if data[:1] == b"R":
            _log(f"driver {self.driver.proc.pid} is warm")
            self.driver.ready = True
            self.retry = RETRY_FIRST
            self.unreachable = 0
            return
        # It failed to warm (or died): tell whoever waits for it, and try again later.
        reason = data[1:].decode(errors="replace").strip() if data[:1] == b"F" else ""
        driver, self.driver = self.driver, None
        self.selector.unregister(driver.channel)
        driver.channel.close()
        status = driver.proc.wait()
        self.why = reason or f"the warm driver exited with status {status}"
        # A cluster whose head is gone for good (stopped without `down`) ends the server.
        self.unreachable = self.unreachable + 1 if reason.startswith("UnreachableError") else 0
        _log(f"driver {driver.proc.pid} failed: {self.why}")
        for conn in self.waiting:
            with contextlib.suppress(OSError):
                send(conn, b"F", self.why.encode())
            conn.close()
        self.waiting.clear()
        self.retry_at = time.monotonic() + self.retry
        self.retry = min(RETRY_MOST, self.retry * 2)

    def _hand_over(self) -> None:
        while self.driver is not None and self.driver.ready and self.waiting:
            conn = self.waiting.popleft()
            driver, self.driver = self.driver, None
            self.selector.unregister(driver.channel)
            try:
                send(driver.channel, b"C", b"", [conn.fileno()])
            except OSError:  # it died just now: the client waits for the next one
                self.waiting.appendleft(conn)
                _end(driver.proc)
            else:
                _log(f"driver {driver.proc.pid} took a client")
                self.used.append(driver.proc)
                conn.close()
            driver.channel.close()
            self.why = "warming"
            self._warm()  # the next one, at once

    def close(self) -> None:
        if self.driver is not None:
            _end(self.driver.proc)
        for conn in self.waiting:
            with contextlib.suppress(OSError):
                send(conn, b"F", b"the exec server stopped")
            conn.close()
        self.listener.close()
        with contextlib.suppress(OSError):
            os.unlink(self.path)


def _end(proc: subprocess.Popen[bytes]) -> None:
    """End a driver this server started that runs no client's program."""
    proc.terminate()
    try:
        proc.wait(STOP_PATIENCE)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def serve(path: str) -> int:
    def stop(signum: int, frame: object) -> None:
        _log(f"stopping ({signal.Signals(signum).name})")
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        server = Server(path)
    except OSError as exc:
        print(f"exec server: cannot listen on {path}: {exc}", file=sys.stderr, flush=True)
        return 1
    print("listening", flush=True)
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)  # `up` stopped reading; the log is stderr
    os.close(null)
    _log(f"listening on {path}")
    try:
        server.run()
        _log("stopping: the state file no longer names this server" if server.unreachable
             < GONE_AFTER else f"stopping: no cluster answers ({server.why})")
    finally:
        server.close()
    return 0


# --- the warm driver --------------------------------------------------------------------------

def drive(channel_fd: int) -> int:
    """Warm up (import exec's code and Ray, join the cluster of `up`), say so to the server,
    take one client's program and run its `exec`; never returns to the caller's code."""
    global DRIVING
    channel = socket.socket(fileno=channel_fd)
    try:
        _holder, cluster, address = _warm_up()
    except BaseException as exc:  # whatever it was, the server is told why
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        with contextlib.suppress(OSError):
            channel.sendall(b"F" + f"{type(exc).__name__}: {first}".encode())
        return 1
    channel.sendall(b"R")
    try:
        _, _, fds = receive(channel)
    except (OSError, ConnectionError):
        os._exit(0)  # the server ended: an unused driver goes with it
    channel.close()
    conn = socket.socket(fileno=fds[0])
    for extra in fds[1:]:
        os.close(extra)
    try:
        _, payload, passed = receive(conn)
        request: dict[str, Any] = json.loads(payload)
    except (OSError, ConnectionError, ValueError):
        os._exit(0)  # the client went before asking
    _take_over(request, passed)
    DRIVING = True
    from tender_ray.cli import exec_command

    exec_command.use_warm(address, cluster)
    send(conn, b"S")
    import threading

    threading.Thread(target=_pass_signals, args=(conn,), daemon=True).start()
    code = _run(list(request["argv"]))
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    # Let go of the client's descriptors before the status goes: a reader of its output sees
    # the end once the client exits, not once this large process has been torn down.
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    with contextlib.suppress(OSError):
        send(conn, b"X", struct.pack(">i", code))
    os._exit(0)  # the connection to Ray (held by `_holder` until here) ends with the process


def _warm_up() -> tuple[Any, Any, str]:
    """Everything exec on the cluster of `up` loads and asks before its program starts."""
    import pydantic  # noqa: F401 - exec's option checks

    import tender_ray.cli.execute
    import tender_ray.cli.main  # noqa: F401 - and with it Ray
    from tender_ray.cli.operate import ClusterState, connect
    from tender_ray.cli.status import check_reachable
    from tender_ray.cluster.cluster import Cluster
    from tender_ray.engines import resolve

    state = ClusterState.load()
    check_reachable(state.address)  # nobody there: say so now, not after Ray's retries
    # The connection to Ray is held by a Cluster of its own, so exec's (attached) one does not
    # disconnect when it ends: the driver's exit does, after the status went back.
    holder = Cluster(state.address, shared_plate=state.shared_plate)
    cluster, _ = connect(state, exporter=False)
    resolve("auto")  # the engine's self-check, cached for exec's
    return holder, cluster, state.address


def _take_over(request: dict[str, Any], passed: list[int]) -> None:
    """Become the client: its standard descriptors, working directory, environment, umask."""
    for fd, theirs in zip(request["fds"], passed, strict=True):
        os.dup2(theirs, fd)
        os.close(theirs)
    for fd in set((0, 1, 2)) - set(request["fds"]):
        with contextlib.suppress(OSError):
            os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    os.umask(int(request["umask"]))


def _pass_signals(conn: socket.socket) -> None:
    """The signals the client got, raised here, where exec's handlers take them; a client
    that went away takes its driver along."""
    while True:
        try:
            kind, payload, _ = receive(conn)
        except (OSError, ConnectionError):
            os._exit(0)
        if kind == b"K":
            os.kill(os.getpid(), struct.unpack(">i", payload)[0])


def _run(argv: list[str]) -> int:
    """`tender-ray` with the client's argv; a signal before exec's own handlers are in place
    stops it as exec does before its program starts."""
    from tender_ray.cli.execute import Interrupted
    from tender_ray.cli.main import main

    def early(signum: int, frame: object) -> None:
        if signum != signal.SIGWINCH:
            raise Interrupted(signum)

    for sig in FORWARDED:
        signal.signal(sig, early)
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except Interrupted as exc:
        _say(f"tender-ray: stopped by {signal.Signals(exc.signum).name} before the program "
             "started")
        return 128 + exc.signum


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    if len(words) == 2 and words[0] == "serve":
        return serve(words[1])
    if len(words) == 2 and words[0] == "driver" and words[1].isdigit():
        return drive(int(words[1]))
    print("usage: python -m tender_ray.cli.exec_server serve SOCKET | driver FD "
          "(started by `tender-ray up`)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    # Through the module's own name: `DRIVING` must be the flag `cli.main` reads.
    from tender_ray.cli import exec_server

    sys.exit(exec_server.main())
