"""Starting and killing the engine's processes the same way on Windows, macOS and Linux.

Standard library, plus psutil where it is installed (the module installs it with the engine).

In Slicer the interpreter is ``PythonSlicer``, a launcher that starts the real interpreter
(``python-real``) as a child and forwards no signal (commontk/AppLauncher). Killing the
launcher alone leaves the interpreter running: on Windows ``Popen.kill()`` is
``TerminateProcess`` of that one process, and a Windows process has no POSIX process group
that a single kill could reach (SlicerMONAIAuto3DSeg's ``process.py`` kills the tree with
psutil for the same reason). :func:`kill_tree` therefore kills every process of the tree,
children first, and on POSIX the process group as well (it also reaches children that were
re-parented after their parent died).

:func:`background_options` starts a process in its own process group or session and, on
Windows, with its console window hidden: a console program started from Slicer (a GUI
program without a console) otherwise opens a console window that lives as long as the
program, and closing it kills the program. Slicer's own ``slicer.util.launchConsoleProcess``
(``Base/Python/slicer/util.py``) hides it with the same ``STARTUPINFO``.
"""

from __future__ import annotations

import os
import signal
import subprocess
from typing import Any

# STARTUPINFO.dwFlags / wShowWindow values (winbase.h, winuser.h), for readers off Windows.
STARTF_USESHOWWINDOW = 0x00000001
SW_HIDE = 0


def background_options(new_group: bool = True) -> dict[str, Any]:
    """``subprocess.Popen`` keyword arguments: no console window on Windows, and with
    ``new_group`` a process group (Windows) or session (POSIX) of its own."""
    if os.name == "nt":
        info = subprocess.STARTUPINFO()  # type: ignore[attr-defined]
        info.dwFlags |= getattr(subprocess, "STARTF_USESHOWWINDOW", STARTF_USESHOWWINDOW)
        info.wShowWindow = SW_HIDE
        options: dict[str, Any] = {"startupinfo": info}
        if new_group:
            options["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP  # type: ignore[attr-defined]
        return options
    return {"start_new_session": True} if new_group else {}


def tree_pids(pid: int) -> list[int]:
    """``pid`` and its descendants (psutil), or just ``pid`` without psutil."""
    try:
        import psutil
    except ImportError:
        return [pid]
    try:
        root = psutil.Process(pid)
        return [pid, *(child.pid for child in root.children(recursive=True))]
    except psutil.Error:
        return [pid]


def kill_tree(process: subprocess.Popen | int, timeout: float = 5.0) -> None:
    """Kill ``process`` (a ``Popen`` or a pid) and every process it started, children first,
    and wait up to ``timeout`` s for the children to go (a ``Popen`` is left for its owner
    to ``wait()``: its exit status stays readable). A process already gone is not an error."""
    pid = process if isinstance(process, int) else process.pid
    try:
        import psutil
    except ImportError:
        psutil = None
    descendants = []
    if psutil is not None:
        try:
            descendants = psutil.Process(pid).children(recursive=True)
        except psutil.Error:
            descendants = []
        for child in reversed(descendants):  # deepest first: nothing left to be re-parented
            _kill_one(child)
    if os.name == "posix":
        try:
            if os.getpgid(pid) == pid:  # its own group (background_options): reach re-parented children
                os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass
    try:
        if isinstance(process, int):
            os.kill(pid, signal.SIGKILL if os.name == "posix" else signal.SIGTERM)  # SIGTERM: TerminateProcess
        else:
            process.kill()
    except OSError:
        pass
    if psutil is not None and descendants:
        psutil.wait_procs(descendants, timeout=timeout)


def _kill_one(process) -> None:
    import psutil

    try:
        process.kill()
    except psutil.Error:
        pass
