"""The peer measured side by side with the LLM route: LiteLLM's proxy, pinned.

It is installed on first use into a virtual environment of its own under the project's
ignored cache (`.cache/peers/litellm-<version>`: its dependencies must not touch the app's
locked ones), and run without a database (no per-user budgets: only the master key) with one
model routed to the same simulated OpenAI-compatible upstream as the backend's LLM route.

Nothing here may fail the benchmark: when LiteLLM cannot be installed or started, the caller
gets the reason, prints it and skips that peer.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from bench.environment import ROOT, ManagedProcess, _child_env, free_port, wait_until_serving

LITELLM_VERSION = "1.106.2"
PEERS_DIR = ROOT / ".cache" / "peers"
LITELLM_MODEL = "bench-model"


@dataclass(frozen=True)
class Peer:
    process: ManagedProcess
    port: int
    key: str  # the bearer key its clients send (the master key: no database, no user keys)


def _uv() -> str | None:
    local = ROOT / ".cache" / "tools" / "bin" / "uv"  # where the Makefile installs uv
    return shutil.which("uv") or (str(local) if local.exists() else None)


def install_commands(venv: Path, uv: str | None, python: str = sys.executable) -> list[list[str]]:
    """The commands that make `venv` with LiteLLM's proxy in it (uv when there is one: it
    takes seconds where pip takes minutes)."""
    requirement = f"litellm[proxy]=={LITELLM_VERSION}"
    if uv is not None:
        return [
            [uv, "venv", "--quiet", "--python", python, str(venv)],
            [uv, "pip", "install", "--quiet", "--python", str(venv / "bin" / "python"),
             requirement],
        ]  # fmt: skip
    return [
        [python, "-m", "venv", str(venv)],
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", requirement],
    ]


def ensure_litellm(
    venv: Path | None = None,
    *,
    commands: list[list[str]] | None = None,
    timeout: float = 900.0,
) -> tuple[Path | None, str]:
    """The `litellm` executable (installing it on first use), or None and why not."""
    venv = venv or PEERS_DIR / f"litellm-{LITELLM_VERSION}"
    exe = venv / "bin" / "litellm"
    done = venv / ".bench-installed"  # written last: a half-finished install is redone
    if done.exists() and exe.exists():
        return exe, f"LiteLLM {LITELLM_VERSION} from {venv}"
    print(f"installing LiteLLM {LITELLM_VERSION} into {venv} (first use) ...", flush=True)
    shutil.rmtree(venv, ignore_errors=True)
    for command in commands or install_commands(venv, _uv()):
        try:
            result = subprocess.run(  # noqa: S603 - fixed commands, no shell
                command, capture_output=True, text=True, timeout=timeout, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return None, f"could not install LiteLLM {LITELLM_VERSION}: {exc}"
        if result.returncode != 0:
            tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
            return None, (
                f"could not install LiteLLM {LITELLM_VERSION} ({Path(command[0]).name} exited "
                f"with {result.returncode}): {' | '.join(tail)}"
            )
    if not exe.exists():
        return None, f"LiteLLM {LITELLM_VERSION} installed without its `litellm` command"
    done.write_text(LITELLM_VERSION + "\n")
    return exe, f"LiteLLM {LITELLM_VERSION} installed into {venv}"


def litellm_config(upstream_port: int, master_key: str) -> str:
    """One model on the simulator's OpenAI-compatible endpoint; no database (so no per-user
    budgets or spend logs: LiteLLM's cheapest configuration); telemetry off."""
    return (
        "model_list:\n"
        f"  - model_name: {LITELLM_MODEL}\n"
        "    litellm_params:\n"
        f"      model: openai/{LITELLM_MODEL}\n"
        f"      api_base: http://127.0.0.1:{upstream_port}/v1\n"
        "      api_key: bench-local-simulator\n"
        "general_settings:\n"
        f"  master_key: {master_key}\n"
        "litellm_settings:\n"
        "  telemetry: false\n"
    )


async def start_litellm(
    exe: Path, upstream_port: int, log_dir: Path, *, seconds: float = 120.0
) -> tuple[Peer | None, str]:
    """LiteLLM's proxy, one worker (its default), on loopback; or None and why not."""
    key = f"sk-bench-{secrets.token_hex(8)}"
    config = log_dir / "litellm-config.yaml"
    config.write_text(litellm_config(upstream_port, key))
    port = free_port()
    env = _child_env({"LITELLM_LOCAL_MODEL_COST_MAP": "True"})  # no download at startup
    env.pop("VIRTUAL_ENV", None)
    args = [str(exe), "--config", str(config), "--host", "127.0.0.1", "--port", str(port),
            "--num_workers", "1"]  # fmt: skip
    try:
        process = ManagedProcess("litellm", args, env, log_dir / "litellm.log")
    except OSError as exc:
        return None, f"could not start LiteLLM: {exc}"
    try:
        await wait_until_serving(
            process, f"http://127.0.0.1:{port}/health/liveliness", seconds=seconds
        )
    except RuntimeError as exc:
        with contextlib.suppress(Exception):
            process.stop()
        last = str(exc).strip().splitlines()[-1:] or [""]
        return None, f"LiteLLM did not start: {last[0][:200]}"
    return Peer(process, port, key), f"LiteLLM {LITELLM_VERSION} on :{port}"
