"""Drive a real JupyterLab in headless Chromium: open a notebook, run it, click a widget.

Used by tests/test_browser.py; point it at any notebook:

    with lab_session(root_dir, artifacts_dir) as (server, page):
        open_notebook(page, server, "03_preferences.ipynb")
        run_all_cells(page)
        click_widget(page, ".rlhf-choice-a")

Everything it starts (the Jupyter server, its kernels, Chromium) is stopped on the way out, and
on failure a screenshot and the server log are left in `artifacts_dir` for a post-mortem.
Settings, workspaces and runtime files live in `artifacts_dir` too, so a run never touches (or
depends on) the user's own JupyterLab state.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")  # Debian's `chromium` package
CHROMIUM_ARGS = [
    "--no-sandbox",  # tests often run as root in a container, where the sandbox cannot start
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass
class LabServer:
    url: str  # http://127.0.0.1:<port>
    token: str
    root_dir: Path
    log_path: Path
    process: subprocess.Popen

    def log_tail(self, n_chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n_chars:]
        except OSError:
            return "(no server log)"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until(condition: Callable[[], object], timeout_s: float, what: str, poll_s: float = 0.25) -> object:
    """Poll `condition` until it returns something truthy; TimeoutError naming `what` otherwise."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(poll_s)


def notebook(cells: list[str]) -> dict:
    """A minimal nbformat-4 notebook of code cells, with the python3 kernel (no kernel dialog)."""
    return {
        "cells": [
            {"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [], "source": source}
            for source in cells
        ],
        "metadata": {
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python"},
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }


def _write_lab_settings(settings_dir: Path) -> None:
    """Settings for a hands-off test run, in the run's own settings folder."""
    plugins = {
        # No news/update toasts: they would fetch from the internet and can cover the notebook.
        "apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
        # No autosave: a lesson notebook opened from the repository must not get its outputs
        # saved into it (notebooks are committed without outputs).
        "docmanager-extension/plugin": {"autosave": False},
    }
    for plugin, settings in plugins.items():
        settings_file = settings_dir / "@jupyterlab" / f"{plugin}.jupyterlab-settings"
        settings_file.parent.mkdir(parents=True, exist_ok=True)
        settings_file.write_text(json.dumps(settings))


def _server_answers(url: str, token: str) -> bool:
    request = urllib.request.Request(f"{url}/api/status", headers={"Authorization": f"token {token}"})
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


@contextmanager
def jupyterlab(root_dir: Path, state_dir: Path, startup_timeout_s: float = 90) -> Iterator[LabServer]:
    """Run `jupyter lab` on a free port with a random token; stop it and its kernels afterwards."""
    import jupyter_server

    root_dir, state_dir = Path(root_dir), Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    port, token = free_port(), secrets.token_hex(16)
    # jupyter_server 2 moved the token to the IdentityProvider; 1.x only knows ServerApp.token.
    token_option = "IdentityProvider" if int(jupyter_server.__version__.split(".")[0]) >= 2 else "ServerApp"
    command = [
        sys.executable, "-m", "jupyterlab",
        "--no-browser",
        "--ip=127.0.0.1",
        f"--port={port}",
        "--ServerApp.port_retries=0",  # fail loudly rather than move to a port we don't know
        f"--{token_option}.token={token}",
        f"--ServerApp.root_dir={root_dir}",
        "--LabApp.expose_app_in_browser=True",  # window.jupyterapp: a fallback to run commands
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        command.append("--allow-root")  # containers and CI often run as root
    settings_dir = state_dir / "lab-settings"
    _write_lab_settings(settings_dir)
    env = dict(
        os.environ,
        # The kernel imports rlhf_lab from this checkout even if it is not pip-installed.
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
        JUPYTER_CONFIG_DIR=str(state_dir / "config"),
        JUPYTER_RUNTIME_DIR=str(state_dir / "runtime"),
        JUPYTERLAB_SETTINGS_DIR=str(settings_dir),
        JUPYTERLAB_WORKSPACES_DIR=str(state_dir / "workspaces"),
    )
    log_path = state_dir / "jupyter-server.log"
    with open(log_path, "wb") as log:
        # A new session (process group), so the server's kernels can be stopped with it.
        process = subprocess.Popen(
            command, cwd=root_dir, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    server = LabServer(f"http://127.0.0.1:{port}", token, root_dir, log_path, process)
    try:
        def started() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"jupyter lab exited with code {process.returncode}:\n{server.log_tail()}")
            return _server_answers(server.url, token)

        try:
            wait_until(started, startup_timeout_s, f"jupyter lab to answer on {server.url}")
        except TimeoutError as error:
            raise TimeoutError(f"{error}\n{server.log_tail()}") from None
        yield server
    finally:
        _stop_server(server)


def _stop_server(server: LabServer) -> None:
    """Polite first (the server shuts its kernels down), then SIGTERM, then SIGKILL the group."""
    process = server.process
    if process.poll() is None:
        request = urllib.request.Request(
            f"{server.url}/api/shutdown", method="POST", headers={"Authorization": f"token {server.token}"}
        )
        try:
            urllib.request.urlopen(request, timeout=5).close()
            process.wait(timeout=20)
        except (urllib.error.URLError, OSError, subprocess.TimeoutExpired):
            pass
    # Whatever is left of the group (the server, a kernel that would not stop): TERM, then KILL.
    for stop_signal in (signal.SIGTERM, signal.SIGKILL):
        if not _group_alive(process):
            break
        os.killpg(process.pid, stop_signal)
        try:
            wait_until(lambda: not _group_alive(process), 10, "the Jupyter processes to stop")
        except TimeoutError:
            continue
    process.wait(timeout=10)


def _group_alive(process: subprocess.Popen) -> bool:
    process.poll()  # reap the server if it has exited, so it does not count as alive
    try:
        os.killpg(process.pid, 0)  # signal 0: only asks whether anyone in the group is left
    except ProcessLookupError:
        return False
    return True


@contextmanager
def chromium_page(artifacts_dir: Path, executable: Path = CHROMIUM, default_timeout_s: float = 60):
    """A headless Chromium page; on an exception a screenshot goes to artifacts_dir/failure.png."""
    from playwright.sync_api import sync_playwright

    artifacts_dir = Path(artifacts_dir)
    artifacts_dir.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(executable), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(default_timeout_s * 1000)
            console = []  # the browser's console: JupyterLab reports widget errors there
            page.on("console", lambda message: console.append(f"{message.type}: {message.text}"))
            try:
                yield page
            except BaseException:
                try:
                    page.screenshot(path=str(artifacts_dir / "failure.png"), full_page=True)
                    (artifacts_dir / "browser-console.log").write_text("\n".join(console))
                except Exception:  # a screenshot must never hide the real error
                    pass
                raise
        finally:
            browser.close()


@contextmanager
def lab_session(root_dir: Path, artifacts_dir: Path, startup_timeout_s: float = 90):
    """`jupyterlab` + `chromium_page`; failures mention where the screenshot and log are."""
    artifacts_dir = Path(artifacts_dir)
    with jupyterlab(root_dir, artifacts_dir / "lab-state", startup_timeout_s) as server:
        try:
            with chromium_page(artifacts_dir) as page:
                yield server, page
        except Exception as error:
            raise AssertionError(
                f"browser session failed: {error}\n(screenshot and logs in {artifacts_dir})\n"
                f"--- server log tail ---\n{server.log_tail()}"
            ) from error


def open_notebook(page, server: LabServer, notebook_path: str, timeout_s: float = 120) -> None:
    """Open a notebook (path relative to the server's root) and wait until its kernel is idle."""
    page.goto(f"{server.url}/lab/tree/{notebook_path}?token={server.token}")
    page.locator(".jp-NotebookPanel .jp-Notebook").first.wait_for(state="visible", timeout=timeout_s * 1000)
    wait_for_kernel_idle(page, timeout_s)


KERNEL_READY_JS = """() => {
    // The toolbar shows 'idle' before the kernel has even connected, and a run started then is
    // lost; so ask JupyterLab itself (window.jupyterapp, exposed by the server flag above).
    const panel = window.jupyterapp && window.jupyterapp.shell.currentWidget;
    const kernel = panel && panel.sessionContext && panel.sessionContext.session
        && panel.sessionContext.session.kernel;
    return !!kernel && kernel.connectionStatus === 'connected' && kernel.status === 'idle';
}"""

# A code cell's prompt reads "[ ]:" until it runs, then "[*]:" and "[1]:".
STARTED_CELL_PROMPT = ".jp-CodeCell .jp-InputPrompt >> text=/\\[(\\*|\\d+)\\]/"


def wait_for_kernel_idle(page, timeout_s: float = 120) -> None:
    """Wait until the current notebook's kernel is connected and idle."""
    page.wait_for_function(KERNEL_READY_JS, timeout=timeout_s * 1000)


def run_all_cells(page, timeout_s: float = 30) -> None:
    """Run > Run All Cells, as a learner would; the command itself if the menu misbehaves.

    Returns once the first cell has started (the rest may still be running).
    """
    wait_for_kernel_idle(page)
    page.locator(".jp-NotebookPanel .jp-Notebook").first.click()  # make the notebook current
    try:
        page.get_by_role("menuitem", name="Run", exact=True).click(timeout=timeout_s * 1000)
        page.get_by_role("menuitem", name="Run All Cells", exact=True).click(timeout=timeout_s * 1000)
        page.locator(STARTED_CELL_PROMPT).first.wait_for(state="attached", timeout=timeout_s * 1000)
    except Exception:
        page.keyboard.press("Escape")  # close the menu if it is still open
        page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")
        page.locator(STARTED_CELL_PROMPT).first.wait_for(state="attached", timeout=timeout_s * 1000)


def cell_errors(page) -> list[str]:
    """Text of the notebook's stderr outputs (tracebacks, warnings): what went wrong in the kernel."""
    outputs = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
    return [text[-1500:] for text in outputs.all_inner_texts()]


def click_widget(page, selector: str, timeout_s: float = 180) -> None:
    """Wait for a widget (e.g. '.rlhf-choice-a') to render, enabled, and click it.

    If it never shows up, the error carries the notebook's stderr outputs: usually a cell failed.
    """
    widget = page.locator(selector).first
    try:
        widget.wait_for(state="visible", timeout=timeout_s * 1000)
        wait_until(widget.is_enabled, timeout_s, f"{selector} to be enabled")
    except Exception as error:
        errors = "\n---\n".join(cell_errors(page)) or "(none)"
        raise TimeoutError(f"widget {selector!r} did not appear: {error}\nnotebook stderr outputs:\n{errors}") from None
    widget.click()
