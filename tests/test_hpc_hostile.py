"""Job scripts against hostile input (issue 11, item 5): a workspace path, an input path or a config
value that holds shell code must never run when the job starts, and must never end the
#SBATCH/#PBS block early (which drops --array, --requeue and --signal). Values the directive
lines cannot carry are refused with exit 2; everything else is quoted, and the generated scripts
are run with bash (stub `newsdl`, `module` and `hostname`) to prove it."""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from conftest import run_cli
from newsdl.errors import UserError
from newsdl.hpc import config as hpc_config
from newsdl.hpc.scripts import Shell, log_id, render_chain

# The path of the bug report, and others that no #SBATCH/#PBS line can carry (under tmp_path: a
# regression writes its scripts there, not under /).
REFUSED_WORKSPACES = [
    'ws $(touch PWNED) "q" `id`',
    "ws\n#SBATCH --wrap=touch PWNED",
    "ws\ntouch PWNED",
    "ws%j",
    "ws#c",
    "w\\s",
    "ws$(touch${IFS}PWNED)",
    "ws`touch${IFS}PWNED`",
    "ws'q'",
    "ws\tq",
]
# Shell metacharacters a directive carries fine: allowed in the workspace, and quoted in the body.
ALLOWED_WORKSPACE = "ws;(touch>PWNED)&|<>*?!{}~[x]é"
HOSTILE_WORDS = ['$(touch PWNED)', '`touch PWNED`', '"; touch PWNED; "', "'; touch PWNED; '", "a\ntouch PWNED",
                 "$((1)) \\ ~ * ?"]


def _pwned(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.startswith("PWNED")]


@pytest.mark.parametrize("scheduler", ["slurm", "pbs"])
@pytest.mark.parametrize("ws", REFUSED_WORKSPACES)
def test_a_workspace_the_directives_cannot_carry_is_refused(tmp_path, sample_corpus, scheduler, ws):
    ws = f"{tmp_path}/{ws}"
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    proc = run_cli("submit", sample_corpus / "articles.jsonl", "-w", ws, "--scheduler", scheduler, "--dry-run",
                   cwd=cwd, env={"PATH": "/nonexistent"})
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert f"--workspace {ws!r}" in proc.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["cwd"] and not any(cwd.iterdir())  # nothing written or run


def test_the_workspace_is_checked_when_rendering_too():
    with pytest.raises(UserError, match=re.escape("--workspace '/x/ws $(id)'")):
        render_chain(hpc_config.ClusterConfig(), Path("/x/ws $(id)"), [Path("/a.jsonl")], Path("/out"))


@pytest.mark.parametrize("key,value", [
    ("partition", "gpu\ntouch PWNED"), ("partition", "gpu --wrap=x"), ("account", "a$(touch PWNED)"),
    ("qos", "q`id`"), ("gres", "gpu:1#x"), ("constraint", 'a"b'), ("account", "a\\b"), ("partition", "a%j"),
    ("partition", "gpu\r"), ("qos", "n\x00"), ("extra", ["--exclusive\ntouch PWNED"]),
    ("pbs_extra", ["-l place=excl\n#PBS -N x"]), ("time", "01:00:00\n"), ("mem", "4G\n"),
])
def test_config_values_the_directives_cannot_carry_are_refused(key, value):
    for where, raw in (("resources", {"resources": {key: value}}),
                       ("stage.train", {"stage": {"train": {key: value}}})):
        with pytest.raises(UserError, match=re.escape(f"cluster.toml: {where}.{key}: ")) as info:
            hpc_config.parse(raw, "cluster.toml")
        assert "\n" not in str(info.value)  # one line, the value shown escaped


def test_an_unparsable_newsdl_command_is_refused():
    with pytest.raises(UserError, match="newsdl: .*not a command line"):
        hpc_config.parse({"newsdl": "'/opt/new sdl"}, "cluster.toml")


def _stubs(bin_dir: Path) -> Path:
    """`newsdl` writes its arguments NUL-separated to $STUB_ARGS; `module` and `hostname` do nothing
    harmful. A `newsdl` path with a blank, to check the config's command is split and quoted."""
    bin_dir.mkdir()
    stub = bin_dir / "new sdl"
    stub.write_text('#!/bin/bash\nprintf \'%s\\0\' "$@" > "$STUB_ARGS"\n'
                    'for v in NOTE Q SETUP_SAW; do [ -n "${!v:-}" ] && echo "$v=${!v}"; done'
                    ' > "$STUB_ARGS.env"\nexit 0\n')
    (bin_dir / "module").write_text("#!/bin/bash\nexit 0\n")
    (bin_dir / "hostname").write_text("#!/bin/bash\necho node1\n")
    for p in bin_dir.iterdir():
        p.chmod(0o755)
    return stub


def _hostile_config(stub: Path, source: str) -> hpc_config.ClusterConfig:
    raw = {
        "newsdl": shlex.quote(str(stub)),
        "modules": HOSTILE_WORDS[:3],
        # Shell code on purpose (documented): harmless code here, it must run as written.
        "setup": "umask 022\nsetup_ran=1",
        "env": {"STAGE_NOTE": "from $HOME", "NEWSDL_TEST_QUOTE": "it\\\"s"},
        "shards": 2, "signal_seconds": 60,
        "resources": {"partition": "gpu-a100.x", "account": "proj_42", "qos": "normal", "gres": "gpu:a100:1",
                      "constraint": "[a100&ib]|v100*2", "extra": ["--exclusive", "--comment=\"two words\""],
                      "pbs_extra": ["-l place=scatter"]},
        "stage": {name: {"args": HOSTILE_WORDS} for name in ("ingest", "featurize", "merge", "train", "evaluate")},
    }
    return dataclasses.replace(hpc_config.parse(raw, source), source=source)


def _directive_block(text: str, prefix: str) -> list[str]:
    """The directive lines, checked to all come before the first shell line."""
    lines = text.splitlines()
    assert lines[0] == "#!/bin/bash"
    block = []
    for line in lines[1:]:
        if not line.startswith(prefix):
            break
        block.append(line)
    later = [line for line in lines[1 + len(block):] if line.startswith(("#SBATCH", "#PBS"))]
    assert not later, f"directives after the first shell line: {later}"
    return block


@pytest.mark.parametrize("scheduler", ["slurm", "pbs"])
def test_hostile_paths_and_values_are_quoted_and_never_run(tmp_path, scheduler):
    stub = _stubs(tmp_path / "bin")
    # A config file whose name would end the header comment and start a command.
    source = str(tmp_path / "cluster\ntouch PWNED-config\n.toml")
    cfg = _hostile_config(stub, source)
    ws = tmp_path / ALLOWED_WORKSPACE
    (ws / "jobs" / "logs").mkdir(parents=True)
    inputs = [tmp_path / f"in {word}.jsonl" for word in HOSTILE_WORDS]
    images_root = tmp_path / 'images $(touch PWNED) "q" `touch PWNED`'
    rendered = render_chain(cfg, ws, inputs, ws / "jobs", scheduler=scheduler, images_root=images_root)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    for r in rendered:
        text, spec = r.text, r.spec
        block = _directive_block(text, "#SBATCH " if scheduler == "slurm" else "#PBS ")
        if scheduler == "slurm":
            for want in (f"--array=0-{spec.array - 1}", "--requeue", "--signal=B:USR1@60",
                         f"--output={ws}/jobs/logs/%x-%A_%a.out", "--partition=gpu-a100.x",
                         "--constraint=[a100&ib]|v100*2", '--comment="two words"'):
                assert f"#SBATCH {want}" in block, (spec.name, want)
        else:
            assert f"#PBS -o {ws}/jobs/logs/" in block and "#PBS -r y" in block and "#PBS -q gpu-a100.x" in block
            assert ("#PBS -J 0-1" in block) == (spec.array > 1)
        check = subprocess.run(["bash", "-n"], input=text, capture_output=True, text=True)
        assert check.returncode == 0, (spec.name, check.stderr)

        r.path.parent.mkdir(parents=True, exist_ok=True)
        r.path.write_text(text)
        args = tmp_path / f"{spec.name}.args"
        env = {"PATH": f"{stub.parent}:{os.environ['PATH']}", "HOME": str(tmp_path), "STUB_ARGS": str(args),
               "SLURM_JOB_ID": "4242", "SLURM_ARRAY_TASK_ID": "0", "PBS_JOBNAME": spec.name,
               "PBS_JOBID": "77[0].server" if spec.array > 1 else "77.server", "PBS_ARRAY_INDEX": "0"}
        proc = subprocess.run(["bash", str(r.path)], cwd=cwd, env=env, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, (spec.name, proc.stdout, proc.stderr)
        assert not _pwned(tmp_path), (spec.name, _pwned(tmp_path))
        expected = [f"0/{spec.array}" if isinstance(w, Shell) else str(w) for w in spec.command[1:]]
        assert args.read_bytes().split(b"\0")[:-1] == [w.encode() for w in expected], spec.name
        if scheduler == "pbs":
            # The exec redirection wrote the log where `newsdl status` looks for it.
            log = ws / "jobs" / "logs" / f"{spec.name}-{log_id(env['PBS_JOBID'])}_0.out"
            assert "[newsdl-job" in log.read_text(), spec.name
        else:
            assert f"{spec.name}: job 4242_0 on node1" in proc.stdout
    assert not any(cwd.iterdir())
    # The config's name stays inside its comment line.
    assert "cluster?touch PWNED-config?.toml." in rendered[0].text


def test_env_values_and_setup_are_shell_code_as_documented(tmp_path):
    """The config's own shell code runs as written: $VARIABLES expand, a backslash quotes."""
    stub = _stubs(tmp_path / "bin")
    cfg = dataclasses.replace(_hostile_config(stub, "cluster.toml"), modules=(),
                              setup='SETUP_SAW="$HOME"; export SETUP_SAW',
                              env={"NOTE": "from $HOME", "Q": 'say \\"hi\\" for \\$5'})
    ws = tmp_path / "ws"
    r = render_chain(cfg, ws, [tmp_path / "a.jsonl"], ws / "jobs", scheduler="slurm", tasks=("geoloc",))[0]
    assert 'export NOTE="from $HOME"' in r.text and "SETUP_SAW=" in r.text
    proc = subprocess.run(["bash", "-c", r.text], capture_output=True, text=True, timeout=60,
                          env={"PATH": f"{stub.parent}:{os.environ['PATH']}", "HOME": "/home/me",
                               "STUB_ARGS": str(tmp_path / "args"), "SLURM_JOB_ID": "1"})
    assert proc.returncode == 0, proc.stderr
    seen = dict(line.split("=", 1) for line in (tmp_path / "args.env").read_text().splitlines())
    assert seen == {"NOTE": "from /home/me", "Q": 'say "hi" for $5', "SETUP_SAW": "/home/me"}
