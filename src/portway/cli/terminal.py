"""`run -t`: the container's command gets a terminal of its own.

A pseudo-terminal is made before the fork: the child makes its side (the slave) its
controlling terminal and its stdin, stdout and stderr, so the command sees a terminal
(`tty` prints /dev/pts/N) of the caller's window size; the parent relays what the
command writes to its own stdout and, with -i, what it reads from its stdin to the
command, the caller's terminal in raw mode meanwhile (keys such as Ctrl-C reach the
command's terminal as they are), and passes window size changes on (SIGWINCH).
Standard library only: imported by the CLI for `run -t` alone.
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
import signal
import termios
import tty

_WINSIZE = b"\0" * 8


def _winsize() -> bytes | None:
    """The caller's terminal's window size (of stdin, stdout or stderr), if it has one."""
    for fd in (0, 1, 2):
        if os.isatty(fd):
            try:
                return fcntl.ioctl(fd, termios.TIOCGWINSZ, _WINSIZE)
            except OSError:
                continue
    return None


class Relay:
    def __init__(self, interactive: bool) -> None:
        self.interactive = interactive
        self.master, self.slave = os.openpty()
        size = _winsize()
        if size is not None:
            fcntl.ioctl(self.slave, termios.TIOCSWINSZ, size)

    def become_child(self) -> None:
        """In the forked child: the terminal's side of the pair as the session's
        controlling terminal and as stdin, stdout and stderr."""
        os.close(self.master)
        os.setsid()
        fcntl.ioctl(self.slave, termios.TIOCSCTTY, 0)
        for fd in (0, 1, 2):
            os.dup2(self.slave, fd)
        if self.slave > 2:
            os.close(self.slave)

    def relay(self, pid: int) -> int:
        """Relay until the child has ended and its output is all out; its wait status."""
        os.close(self.slave)
        saved = None
        if self.interactive and os.isatty(0):
            saved = termios.tcgetattr(0)
            tty.setraw(0)

        def resize(_signum: int, _frame: object) -> None:
            size = _winsize()
            if size is not None:
                try:
                    fcntl.ioctl(self.master, termios.TIOCSWINSZ, size)
                except OSError:
                    pass

        previous = signal.signal(signal.SIGWINCH, resize)
        try:
            self._pump(pid)
            while True:
                try:
                    return os.waitpid(pid, 0)[1]
                except InterruptedError:
                    continue
        finally:
            signal.signal(signal.SIGWINCH, previous)
            if saved is not None:
                termios.tcsetattr(0, termios.TCSADRAIN, saved)
            os.close(self.master)

    def _pump(self, pid: int) -> None:
        pidfd = os.pidfd_open(pid)
        poller = select.poll()
        poller.register(self.master, select.POLLIN)
        poller.register(pidfd, select.POLLIN)
        if self.interactive:
            poller.register(0, select.POLLIN)
        out_open = True
        try:
            while True:
                try:
                    events = poller.poll()
                except InterruptedError:
                    continue
                for fd, _ in events:
                    if fd == self.master:
                        data = self._read_master()
                        if data is None:
                            return
                        out_open = out_open and _write_all(1, data)
                    elif fd == pidfd:
                        # The command has ended: what it wrote last, then done.
                        os.set_blocking(self.master, False)
                        while (data := self._read_master()):
                            out_open = out_open and _write_all(1, data)
                        return
                    elif fd == 0:
                        data = os.read(0, 65536)
                        if not data:
                            poller.unregister(0)
                            continue
                        _write_all(self.master, data)
        finally:
            os.close(pidfd)

    def _read_master(self) -> bytes | None:
        """What the command wrote; None once its side is closed (or nothing is left)."""
        try:
            return os.read(self.master, 65536) or None
        except BlockingIOError:
            return None
        except OSError as exc:
            if exc.errno == errno.EIO:  # every process of its side has closed it
                return None
            raise


def _write_all(fd: int, data: bytes) -> bool:
    """Write it all; False if the reader has gone (the rest is dropped)."""
    try:
        while data:
            data = data[os.write(fd, data):]
    except BrokenPipeError:
        return False
    return True
