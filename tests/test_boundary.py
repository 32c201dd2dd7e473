"""The command line's one boundary (``fedticket.cli.explain``): whatever comes from the
user's files, arguments, environment or machine ends as one line and a status, exit 2
for bad input and 1 for a failure of the machine, never a traceback; anything else says
it is a bug and leaves its traceback in a log file.

The cases are by class, for every command: files whose first bytes look right and whose
content is damaged; a path in the way; numbers of zero or below where a count is needed;
environment variables; configs that are valid UTF-8 but pathological for a parser."""

import io
import shutil
import zipfile
from pathlib import Path

import pytest

from fedticket.cli import main
from shared import GOOD

PK = b"PK\x03\x04" + b"\x00" * 26 + b"not a zip archive at all"  # a zip header, then junk
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + b"junk" * 8


def a_zip_without_arrays() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("readme.txt", "hello")
    return buf.getvalue()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A finished run, and a folder of files that are wrong in one way each."""
    root = tmp_path_factory.mktemp("boundary")
    (root / "good.toml").write_text(GOOD)
    out = root / "runs"
    assert main(["run", str(root / "good.toml"), "--out", str(out), "--quiet"]) == 0
    [run] = [p for p in out.iterdir() if p.name.startswith("fedavg_")]
    f = root / "files"
    f.mkdir()
    (f / "pk.npz").write_bytes(PK)
    (f / "zip-no-arrays.npz").write_bytes(a_zip_without_arrays())
    (f / "a-file").write_text("in the way\n")
    (f / "deep-array.toml").write_text("methods = " + "[" * 100_000 + "]" * 100_000 + "\n")
    (f / "deep-table.toml").write_text("methods = ['fedavg']\n" + "x = " + "{a = " * 50_000
                                       + "1" + "}" * 50_000 + "\n")
    (f / "nul.toml").write_text('methods = ["fedavg"]\x00\n')
    (f / "huge-int.toml").write_text(GOOD.replace("rounds = 1", "rounds = " + "9" * 400))
    (f / "huge-float.toml").write_text(GOOD.replace("rounds = 1", "rounds = 1e400"))
    images = f / "images" / "cat"
    images.mkdir(parents=True)
    (images / "a.png").write_bytes(PNG)
    (images / "b.png").write_bytes(PNG)
    (f / "images" / "dog").mkdir()
    (f / "images" / "dog" / "c.png").write_bytes(PNG)
    # run folders damaged in ways compare and export meet
    for name, damage in (("pk-final", lambda r: (r / "final.npz").write_bytes(PK)),
                         ("pk-mask", lambda r: (r / "mask.npz").write_bytes(PK)),
                         ("binary-summary",
                          lambda r: (r / "summary.json").write_bytes(b"\xff\xfe{")),
                         ("deep-summary",
                          lambda r: (r / "summary.json").write_text("[" * 100_000)),
                         ("spec-array", lambda r: (r / "spec.json").write_text("[1, 2]"))):
        copy = root / name / run.name
        copy.parent.mkdir()
        shutil.copytree(run, copy)
        damage(copy)
    return root, out, run


def _npz(path: str) -> list[str]:
    return ["--set", 'data.dataset="npz"', "--set", f'data.path="{path}"']


# (command and arguments, exit status, a fragment the one line must hold)
CASES = [
    # files whose first bytes look right and whose content is damaged
    (["run", "{good}", *_npz("{f}/pk.npz")], 2, "pk.npz"),
    (["run", "{good}", *_npz("{f}/zip-no-arrays.npz")], 2, "lacks arrays"),
    (["run", "{good}", "--set", 'data.dataset="folder"', "--set",
      'data.path="{f}/images"'], 2, "a.png"),
    (["compare", "{root}/binary-summary", "--no-plots"], 2, "summary.json"),
    (["compare", "{root}/deep-summary", "--no-plots"], 2, "summary.json"),
    (["compare", "{root}/spec-array", "--no-plots"], 2, "spec.json"),
    (["export", "{root}/pk-final/{run}", "--out", "{tmp}/m.safetensors"], 2, "final.npz"),
    (["export", "{root}/pk-mask/{run}", "--out", "{tmp}/m.onnx"], 2, "mask.npz"),
    (["compare", "{f}/pk.npz"], 2, "pk.npz"),
    # a path in the way
    (["run", "{good}", "--out", "{f}/a-file"], 2, "a-file"),
    (["study", "{f}/a-file"], 2, "a-file"),
    (["flower-app", "{good}", "--dir", "{f}/a-file"], 2, "a-file"),
    (["compare", "{out}", "--plots", "{f}/a-file"], 2, "a-file"),
    (["export", "{run_dir}", "--out", "{f}/a-file/m.onnx"], 2, "a-file"),
    (["export", "{run_dir}", "--out", "{f}"], 2, "--format"),
    (["export", "{run_dir}", "--out", "{tmp}/no-such-folder/m.onnx"], 2, "no-such-folder"),
    (["export", "{f}/a-file", "--out", "{tmp}/m.onnx"], 2, "a-file"),
    (["compare", "{f}/a-file"], 2, "a-file"),
    # numbers of zero or below where a count is needed, and numbers that are not numbers
    (["run", "{good}", "--workers", "0"], 2, "--workers"),
    (["run", "{good}", "--threads", "two"], 2, "--threads"),
    (["run", "{good}", "--seed", "-1"], 2, "--seed"),
    (["run", "{good}", "--jobs", "1e9"], 2, "--jobs"),
    (["study", "{good}", "--jobs", "0"], 2, "--jobs"),
    (["study", "{good}", "--workers", "-2"], 2, "--workers"),
    (["deploy", "{good}", "--nodes", "0"], 2, "--nodes"),
    (["deploy", "{good}", "--min-replies", "0"], 2, "--min-replies"),
    (["deploy", "{good}", "--round-timeout", "nan"], 2, "--round-timeout"),
    (["deploy", "{good}", "--round-timeout", "-5"], 2, "--round-timeout"),
    (["deploy", "{good}", "--threads", "-1"], 2, "--threads"),
    (["flower-app", "{good}", "--dir", "{tmp}/app", "--threads", "-3"], 2, "--threads"),
    (["compare", "{out}", "--target", "0"], 2, "--target"),
    (["compare", "{out}", "--target", "1.5"], 2, "--target"),
    (["compare", "{out}", "--target", "nan"], 2, "--target"),
    (["run", "{good}", "--jobs", "64"], 2, "--jobs"),
    # configs valid as UTF-8 and pathological for a parser
    (["run", "{f}/deep-array.toml"], 2, "deep-array.toml"),
    (["run", "{f}/deep-table.toml"], 2, "deep-table.toml"),
    (["run", "{f}/nul.toml"], 2, "nul.toml"),
    (["run", "{f}/huge-int.toml"], 2, "federate.rounds"),
    (["run", "{f}/huge-float.toml"], 2, "federate.rounds"),
    (["run", "{good}", "--set", "federate.rounds=" + "[" * 50_000], 2, "federate.rounds"),
    (["run", "{good}", "--set", "federate.rounds=" + "9" * 5000], 2, "federate.rounds"),
    (["study", "{f}/deep-array.toml"], 2, "deep-array.toml"),
]


def fill(arg: str, root: Path, out: Path, run: Path, tmp: Path) -> str:
    return (arg.replace("{good}", str(root / "good.toml")).replace("{f}", str(root / "files"))
            .replace("{root}", str(root)).replace("{out}", str(out))
            .replace("{run_dir}", str(run)).replace("{run}", run.name)
            .replace("{tmp}", str(tmp)))


@pytest.mark.parametrize("argv, status, fragment", CASES,
                         ids=[f"{i:02d}-{c[0][0]}" for i, c in enumerate(CASES)])
def test_every_command_answers_bad_input_in_one_line(world, tmp_path, capsys, argv, status,
                                                      fragment):
    root, out, run = world
    argv = [fill(a, root, out, run, tmp_path) for a in argv]
    if argv[0] in ("run", "study", "deploy") and "--out" not in argv:
        argv += ["--out", str(tmp_path / "out")]
    if argv[0] in ("run", "study", "deploy"):
        argv.append("--quiet")
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's refusals
        code = e.code
    err = capsys.readouterr().err.strip()
    assert code == status, err
    assert err.startswith("fedticket: error:") and "\n" not in err, err
    assert "Traceback" not in err and "this is a bug" not in err, err
    assert fragment.lower() in err.lower(), err
    assert not (tmp_path / "out").exists() or not any(
        p.name.startswith(("fedavg_", ".tmp")) for p in (tmp_path / "out").iterdir())


# environment variables fedticket reads, set to values it cannot use: refused by every
# command before it starts, not later inside a Flower process
ENV_CASES = ["abc", "-1", "1.5", "99999", "\uff12", " 2x"]


@pytest.mark.parametrize("value", ENV_CASES)
def test_an_unusable_environment_variable_is_one_line(world, capsys, monkeypatch, value):
    _, out, _ = world
    monkeypatch.setenv("FEDTICKET_THREADS", value)
    capsys.readouterr()
    code = main(["compare", str(out), "--no-plots"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("fedticket: error: FEDTICKET_THREADS") and (
        "\n" not in err), err


def test_a_usable_environment_variable_is_taken():
    from fedticket.environment import thread_count

    assert [thread_count(v, "x") for v in ("", " 3 ", "0", 4, None)] == [0, 3, 0, 4, 0]


def test_there_are_at_least_30_new_cases():
    assert len(CASES) + len(ENV_CASES) >= 30
