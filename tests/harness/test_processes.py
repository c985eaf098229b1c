"""How the example, the stress run and the tests start processes (examples/processes.py)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from examples.processes import ROOT

CTRL_C_WHILE_FORKING = textwrap.dedent(
    """
    import os, signal, sys
    from examples.processes import start_process

    # As in a terminal: a run started in the background of a non-interactive shell
    # (`make test &`, nohup) inherits SIGINT ignored, and would never see the Ctrl-C.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    # A Ctrl-C that lands while Python runs its at-fork callbacks in the parent,
    # as a user's did during make serve's start-up.
    os.register_at_fork(after_in_parent=lambda: os.kill(os.getpid(), signal.SIGINT))
    try:
        child = start_process([sys.executable, "-c", "import time; time.sleep(60)"])
    except KeyboardInterrupt:
        print("interrupted")
    else:
        print("lost")
        child.kill()
    """
)


def run(script: str) -> subprocess.CompletedProcess[str]:
    """Run ``script`` in a Python of its own, in the project's folder."""
    return subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_ctrl_c_while_a_process_starts_is_not_lost() -> None:
    done = run(CTRL_C_WHILE_FORKING)
    assert done.stdout.strip() == "interrupted", done.stderr


def test_a_started_process_gets_the_signals_it_would_have_had() -> None:
    """The stop signals are held back across the fork, not in the child after exec."""
    show_mask = "import signal; print(sorted(signal.pthread_sigmask(signal.SIG_BLOCK, ())))"
    script = textwrap.dedent(
        f"""
        import os, sys
        from examples.processes import start_process

        read, write = os.pipe()
        with os.fdopen(write, "wb") as output:
            child = start_process([sys.executable, "-c", {show_mask!r}], output=output)
        child.wait()
        print(os.read(read, 1000).decode().strip())
        """
    )
    done = run(script)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
