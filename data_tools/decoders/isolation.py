"""Run decoder calls in a persistent child process, so a time limit holds even when the decoder spins
inside C++ holding the GIL (decord on containers that over-report frames): signals and threads cannot
interrupt that, but SIGKILL on another process can.

Messages are pickle protocol 5 with out-of-band buffers over a Unix socketpair: numpy arrays travel as
raw bytes received straight into their final buffers (no extra pickling copy).

The child is started with os.fork (not multiprocessing.Process), because DataLoader workers are daemonic
and multiprocessing refuses to let daemonic processes have children. start_method="spawn" starts a
fresh interpreter instead (for parents with threads, where fork is unsafe).

Nothing outlives its owner. Every child leads its own process group (setsid), so the watchdog kills the child
together with whatever it started (the ffmpeg backend's ffmpeg) with one killpg. Every child asks the kernel
for SIGKILL when its parent dies (Linux PR_SET_PDEATHSIG; a SIGKILLed DataLoader worker cannot clean up), and
checks right after asking that the parent is still there. A child's temporaries go to a folder the parent
makes for it (TMPDIR inside the child) and removes when the child is gone; folders of owners that were
SIGKILLed before they could remove theirs are swept by the next runner that starts a child.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import pickle
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import weakref

from .base import DecodeError, DecodeTimeout

_U64 = struct.Struct("<Q")
_IDLE_POLL_S = 1.0  # how often an idle child checks that its parent is still alive
_LIVE: "weakref.WeakSet[IsolatedRunner]" = weakref.WeakSet()


_TMP_PREFIX = "hdvila-decoder-"  # per-child temp folders: hdvila-decoder-<pid namespace>-<owner pid>-<random>
try:  # pids are only comparable within one pid namespace (containers may share a /tmp)
    _PID_NS = str(os.stat("/proc/self/ns/pid").st_ino)
except OSError:
    _PID_NS = "0"
_PR_SET_PDEATHSIG = 1
try:  # loaded now: after a fork, dlopen could deadlock on a lock another thread held
    _LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
except OSError:
    _LIBC = None


class _Timeout(Exception):
    pass


def die_with_parent(parent_pid: int, sig: int = signal.SIGKILL) -> None:
    """In a freshly started child: have the kernel send `sig` when the parent dies (Linux), then make sure
    the parent did not die before that was in place (we would already be someone else's child).

    The signal follows the parent *thread* that started the child. Safe between fork and exec (no
    allocation, no locks), so it also serves as a subprocess preexec_fn.
    """
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    if os.getppid() != parent_pid:
        os._exit(1)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale_temp_folders(root: str | None = None) -> list[str]:
    """Remove per-child temp folders whose owner process is gone (it was SIGKILLed). Returns what went."""
    root = root or tempfile.gettempdir()
    removed = []
    try:
        names = os.listdir(root)
    except OSError:
        return removed
    for name in names:
        if not name.startswith(_TMP_PREFIX):
            continue
        ns, owner, *_ = name[len(_TMP_PREFIX):].split("-") + ["", ""]
        if ns != _PID_NS or not owner.isdigit() or _pid_alive(int(owner)):
            continue
        path = os.path.join(root, name)
        shutil.rmtree(path, ignore_errors=True)
        if not os.path.exists(path):
            removed.append(path)
    return removed


# ---------------------------------------------------------------------------------------------- framing

def _dumps(obj) -> list:
    """[header, body, raw buffers...]: header holds the part count and every part's length."""
    bufs: list[pickle.PickleBuffer] = []
    body = pickle.dumps(obj, protocol=5, buffer_callback=bufs.append)
    raws = [b.raw() for b in bufs]
    sizes = [len(body)] + [r.nbytes for r in raws]
    header = _U64.pack(len(sizes)) + struct.pack(f"<{len(sizes)}Q", *sizes)
    return [header, body, *raws]


def _remaining(deadline: float | None) -> float | None:
    if deadline is None:
        return None
    left = deadline - time.monotonic()
    if left <= 0:
        raise _Timeout
    return left


def _send(sock: socket.socket, parts: list, deadline: float | None) -> None:
    for part in parts:
        sock.settimeout(_remaining(deadline))
        try:
            sock.sendall(part)
        except socket.timeout:
            raise _Timeout from None


def _recv_into(sock: socket.socket, buf, deadline: float | None) -> None:
    view = memoryview(buf).cast("B")
    pos, n = 0, view.nbytes
    while pos < n:
        sock.settimeout(_remaining(deadline))
        try:
            got = sock.recv_into(view[pos:])
        except socket.timeout:
            raise _Timeout from None
        if got == 0:
            raise EOFError("peer closed the connection")
        pos += got


def _recv(sock: socket.socket, deadline: float | None):
    return _loads(_recv_parts(sock, deadline))


def _loads(parts: list):
    return pickle.loads(parts[0], buffers=parts[1:])


def _recv_parts(sock: socket.socket, deadline: float | None) -> list:
    head = bytearray(8)
    _recv_into(sock, head, deadline)
    (count,) = _U64.unpack(head)
    sizes_raw = bytearray(8 * count)
    _recv_into(sock, sizes_raw, deadline)
    sizes = struct.unpack(f"<{count}Q", sizes_raw)
    parts = []
    for size in sizes:
        buf = bytearray(size)  # writable, so arrays rebuilt on it are writable too
        _recv_into(sock, buf, deadline)
        parts.append(buf)
    return parts


# ------------------------------------------------------------------------------------------------ child

def _child_setup(tmpdir: str | None = None) -> None:
    if tmpdir is not None:  # temporaries of this child (and of what it starts) go to its own folder
        os.environ["TMPDIR"] = tmpdir
        tempfile.tempdir = tmpdir
    # Decoding is the child's only job; one thread each for BLAS/OpenMP/torch avoids oversubscription.
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = "1"
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            torch.set_num_threads(1)
        except Exception:
            pass
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it kills us
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _describe(fn) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


def _serve(sock: socket.socket, parent_pid: int) -> None:
    """Answer requests until the parent closes the socket or dies."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    while True:
        while not poller.poll(_IDLE_POLL_S * 1000):
            if os.getppid() != parent_pid:
                return  # orphaned: another process may still hold our socket, so EOF may never come
        try:
            parts = _recv_parts(sock, None)
        except (EOFError, OSError):
            return
        fn = None
        try:
            try:
                fn, args, kwargs = _loads(parts)
            except Exception as exc:  # e.g. a function that only exists in the parent's __main__
                raise DecodeError(f"the isolated process cannot load the call: {type(exc).__name__}: {exc}") from None
            reply = ("ok", fn(*args, **kwargs))
        except BaseException as exc:  # everything goes back to the caller
            reply = ("err", _pack_exception(exc))
        try:
            parts = _dumps(reply)
        except Exception as exc:
            parts = _dumps(("err", _pack_exception(
                DecodeError(f"result of {_describe(fn)} cannot be pickled: {type(exc).__name__}: {exc}"))))
        try:
            _send(sock, parts, None)
        except OSError:
            return


def _pack_exception(exc: BaseException) -> tuple:
    """(pickled exception or None, type name, message, child traceback)."""
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        blob = pickle.dumps(exc, protocol=5)
        pickle.loads(blob)  # some exception classes pickle but cannot be rebuilt
    except Exception:
        blob = None
    return blob, type(exc).__name__, str(exc), tb


def _unpack_exception(packed: tuple) -> BaseException:
    blob, name, message, tb = packed
    exc = None
    if blob is not None:
        try:
            exc = pickle.loads(blob)
        except Exception:
            exc = None
    if not isinstance(exc, BaseException):
        exc = DecodeError(f"{name}: {message}")
    exc.add_note(f"raised in the isolated decoder process:\n{tb.rstrip()}")
    return exc


def _spawn_main() -> None:
    """Entry point of a spawned child: argv[1] is its socket's file descriptor, argv[2] its parent's pid."""
    parent_pid = int(sys.argv[2])
    die_with_parent(parent_pid)
    sock = socket.socket(fileno=int(sys.argv[1]))
    _child_setup(os.environ.get("TMPDIR"))
    _serve(sock, parent_pid)


# ----------------------------------------------------------------------------------------------- parent

class _Child:
    """One running child process, owned by the process that started it."""

    def __init__(self, sock: socket.socket, pid: int, popen: subprocess.Popen | None, tmpdir: str | None) -> None:
        self.sock, self.pid, self.popen, self.tmpdir = sock, pid, popen, tmpdir
        self.owner = os.getpid()

    def forget(self) -> None:
        """In a forked copy of the owner: drop our duplicate of the socket, leave the process alone."""
        try:
            self.sock.close()
        except OSError:
            pass

    def _wait(self, block: bool) -> int | None:
        """Reap the child; its waitpid status, or None when it is still running."""
        if self.popen is not None:
            code = self.popen.wait() if block else self.popen.poll()
            if code is None:
                return None
            return (-code) if code < 0 else (code << 8)  # back to a raw wait status
        try:
            pid, status = os.waitpid(self.pid, 0 if block else os.WNOHANG)
        except ChildProcessError:
            return 0
        return status if pid else None

    def _exited(self) -> bool:
        """Whether the child has exited, without reaping it (its pid, and so its group id, stay ours)."""
        try:
            return os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
        except ChildProcessError:
            return True

    def kill(self, grace: float = 0.0) -> int | None:
        """Close the socket; wait up to `grace` s for a natural exit; SIGKILL the child's whole process group
        (what the child started goes too), reap, remove its temp folder. Returns the child's status."""
        self.forget()
        if os.getpid() != self.owner:
            return None
        end = time.monotonic() + grace
        while not self._exited() and time.monotonic() < end:
            time.sleep(0.01)
        # Before reaping: until then the pid cannot be reused, so the group id still names our group.
        for kill in (os.killpg, os.kill):
            try:
                kill(self.pid, signal.SIGKILL)
                break
            except ProcessLookupError:
                continue  # no group (already empty): make sure of the child itself
            except PermissionError:
                continue
        status = self._wait(block=True)
        if self.tmpdir is not None:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
        return status


def _status_text(status: int | None) -> str:
    if status is None:
        return "status unknown"
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = str(sig)
        return f"killed by {name}"
    if os.WIFEXITED(status):
        return f"exit code {os.WEXITSTATUS(status)}"
    return f"wait status {status}"


class _Box:
    """The runner's child, held outside the runner so the finalizer does not keep the runner alive."""

    def __init__(self) -> None:
        self.child: _Child | None = None

    def stop(self) -> None:
        child, self.child = self.child, None
        if child is not None:
            child.kill()


def _forget_inherited() -> None:
    # In any forked process (our own children, DataLoader workers): runners copied from the parent must
    # not talk to (or kill) the parent's children; they start their own on first use.
    for runner in list(_LIVE):
        child = runner._box.child
        if child is not None and child.owner != os.getpid():
            runner._box.child = None
            child.forget()
        runner._lock = threading.Lock()  # a copy may have been held by another thread at fork time


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_inherited)


class IsolatedRunner:
    """Run module-level functions in a persistent child process with a per-call time limit.

    call() returns fn's result or re-raises its exception (with the child's traceback as a note). On
    timeout the child is SIGKILLed and DecodeTimeout is raised; if the child dies (segfault, os._exit)
    DecodeError is raised. Either way the next call starts a fresh child. max_calls recycles the child
    after that many calls (bounds slow leaks in decoder libraries).
    """

    def __init__(self, timeout: float, start_method: str = "fork", max_calls: int | None = None) -> None:
        if start_method not in ("fork", "spawn"):
            raise ValueError(f"start_method must be 'fork' or 'spawn', got {start_method!r}")
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        self.timeout = float(timeout)
        self.start_method = start_method
        self.max_calls = max_calls
        self._calls = 0  # calls served by the current child
        self.restarts = 0  # children started after the first (timeouts, deaths, max_calls)
        self._started = 0
        self._box = _Box()
        self._lock = threading.Lock()
        self._closed = False
        self._finalizer = weakref.finalize(self, _Box.stop, self._box)
        _LIVE.add(self)

    # -- child management
    def _start(self) -> _Child:
        sweep_stale_temp_folders()
        tmpdir = tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{_PID_NS}-{os.getpid()}-")
        try:
            return self._start_in(tmpdir)
        except BaseException:
            shutil.rmtree(tmpdir, ignore_errors=True)
            raise

    def _start_in(self, tmpdir: str) -> _Child:
        parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        if self.start_method == "fork":
            parent_pid = os.getpid()
            pid = os.fork()
            if pid == 0:  # child: never return into the caller's code
                code = 0
                try:
                    os.setsid()  # our own session and process group, which the watchdog kills as a whole
                    die_with_parent(parent_pid)
                    parent_sock.close()
                    _child_setup(tmpdir)
                    _serve(child_sock, parent_pid)
                except BaseException:
                    code = 1
                finally:
                    os._exit(code)
            popen = None
        else:
            env = dict(os.environ)
            # The child must import the same modules the functions live in.
            env["PYTHONPATH"] = os.pathsep.join([p or os.getcwd() for p in sys.path])
            env["TMPDIR"] = tmpdir
            popen = subprocess.Popen(
                [sys.executable, "-c", "from data_tools.decoders.isolation import _spawn_main; _spawn_main()",
                 str(child_sock.fileno()), str(os.getpid())],
                pass_fds=[child_sock.fileno()], env=env, close_fds=True, start_new_session=True)
            pid = popen.pid
        child_sock.close()
        self._started += 1
        self.restarts = max(0, self._started - 1)
        return _Child(parent_sock, pid, popen, tmpdir)

    def _child(self) -> _Child:
        child = self._box.child
        if child is not None and child.owner != os.getpid():
            child.forget()  # inherited through a fork we did not see (no register_at_fork)
            child = self._box.child = None
        if child is not None and self.max_calls and self._calls >= self.max_calls:
            self._box.child = None
            child.kill()
            child = None
        if child is None:
            child = self._box.child = self._start()
            self._calls = 0
        return child

    @property
    def pid(self) -> int | None:
        """Pid of the current child, if one is running."""
        child = self._box.child
        return child.pid if child is not None and child.owner == os.getpid() else None

    # -- calls
    def call(self, fn, *args, **kwargs):
        """fn(*args, **kwargs) in the child, within self.timeout seconds."""
        if self._closed:
            raise RuntimeError("IsolatedRunner is closed")
        parts = _dumps((fn, args, kwargs))  # pickling errors surface here, before the child sees anything
        with self._lock:
            child = self._child()
            self._calls += 1
            deadline = time.monotonic() + self.timeout
            try:
                _send(child.sock, parts, deadline)
                status, payload = _recv(child.sock, deadline)
            except _Timeout:
                self._box.child = None
                child.kill()
                raise DecodeTimeout(f"{_describe(fn)} took over {self.timeout:g} s; decoder process killed") from None
            except (EOFError, OSError) as exc:
                self._box.child = None
                how = _status_text(child.kill(grace=1.0))
                raise DecodeError(f"decoder process died ({how}) while running {_describe(fn)}") from exc
        if status == "ok":
            return payload
        raise _unpack_exception(payload)

    def close(self) -> None:
        self._closed = True
        self._finalizer()

    def __enter__(self) -> "IsolatedRunner":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
