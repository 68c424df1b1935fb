"""Transient faults do not lose work: a search that ended in an error because the model server was down is
tried again when the same command runs again, even through a kill, and the run ends as an uninterrupted one."""

from __future__ import annotations

import signal
import subprocess
import time

from mmcof_gen.store import RunStore
from tests.support.faults import CLI, assert_run_whole, decisions, run_cli, sign_reader_vlm, vlm_config_yaml
from tests.support.scripted_server import Reply, ScriptedServer


def test_a_server_outage_is_retried_on_resume_through_a_kill_and_ends_as_an_uninterrupted_run(sign_inputs, tmp_path):
    images, questions = sign_inputs
    down = [True]

    def script(body: dict) -> Reply:
        return Reply(status=503) if down[0] else sign_reader_vlm(body)

    with ScriptedServer(script) as server:
        config = vlm_config_yaml(tmp_path / "vlm.yaml", server.url, max_retries=1)
        command = [*CLI, "synthesize", "--images", str(images), "--questions", str(questions), "--config", str(config)]
        down[0] = False
        reference = tmp_path / "reference"
        assert subprocess.run([*command, "--out", str(reference)], capture_output=True, timeout=180).returncode == 0

        down[0] = True
        out = tmp_path / "run"
        outage = subprocess.run([*command, "--out", str(out)], capture_output=True, text=True, timeout=180)
        assert outage.returncode == 1, outage.stderr  # ran, made no trajectory
        assert "0 accepted (0 direct, 0 zoom), 0 rejected, 9 errors, 8 will be retried on resume" in outage.stdout
        assert run_cli("stats", out).stdout.count("9 errors, 8 will be retried on resume") == 1
        transient = {e.id for e in RunStore(out).errors() if e.transient}
        assert len(transient) == 8
        assert [e.image for e in RunStore(out).errors() if not e.transient] == ["missing.png"]

        down[0] = False  # the server is back: the same command, killed once a search is done, then again
        process = subprocess.Popen([*command, "--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while process.poll() is None and not list(RunStore(out).trajectories()):
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL)
        process.wait()
        resumed = subprocess.run([*command, "--out", str(out)], capture_output=True, text=True, timeout=180)
    assert resumed.returncode == 0, resumed.stderr
    assert_run_whole(out)
    assert decisions(out) == decisions(reference)
    accepted = {t.id for t in RunStore(reference).trajectories() if t.status == "accepted"}
    assert accepted and {t.id for t in RunStore(out).trajectories() if t.status == "accepted"} == accepted
    retried = (out / "retried-errors.jsonl").read_text().splitlines()
    assert len(retried) >= 8 and not any(e.transient for e in RunStore(out).errors())
