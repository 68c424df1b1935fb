"""A model server that fails 30% of requests in mixed ways: the run completes, retries are bounded and honour
Retry-After, a fault never changes what a search decides, and no search outlives its time budget."""

from __future__ import annotations

import asyncio
import re
from collections import Counter, defaultdict

import pytest

from mmcof_gen.models.chat import ChatMessage, ChatModelConfig, chat_model
from mmcof_gen.store import RunStore
from tests.support.faults import (FAULTS, FaultyScript, assert_run_whole, decisions, run_cli, sign_reader_vlm,
                                      vlm_config_yaml, write_sign_inputs)
from tests.support.scripted_server import Reply, ScriptedServer

MAX_RETRIES = 3
RETRY_AFTER = 0.5


def synthesize_against(script, inputs, folder, exit_code=0, **config) -> tuple:
    images, questions = inputs
    with ScriptedServer(script) as server:
        yaml_path = vlm_config_yaml(folder / "vlm.yaml", server.url, **config)
        done = run_cli("synthesize", "--images", images, "--questions", questions, "--config", yaml_path,
                       "--out", folder / "run", timeout=180)
    assert done.returncode == exit_code, done.stderr
    return folder / "run", server, done


@pytest.fixture(scope="module")
def distinct_requests(tmp_path_factory):
    """8 images, one question each: no two searches send the same request, so a fault hits one caller."""
    return write_sign_inputs(tmp_path_factory.mktemp("signs"), count=8, both_questions=False)


@pytest.fixture(scope="module")
def fault_free(distinct_requests, tmp_path_factory):
    run, _, _ = synthesize_against(sign_reader_vlm, distinct_requests, tmp_path_factory.mktemp("clean"),
                                   max_retries=MAX_RETRIES, timeout=1.0, resolutions=[448, 672])
    return decisions(run)


@pytest.fixture(scope="module")
def faulty_run(distinct_requests, tmp_path_factory):
    script = FaultyScript(sign_reader_vlm, rate=0.3, seed=3, retry_after=RETRY_AFTER, stall=1.6)
    run, server, done = synthesize_against(script, distinct_requests, tmp_path_factory.mktemp("faulty"),
                                           max_retries=MAX_RETRIES, timeout=1.0, resolutions=[448, 672])
    return run, script, done


def test_thirty_percent_mixed_faults_every_kind_injected_and_the_run_completes(faulty_run):
    run, script, done = faulty_run
    injected = script.injected()
    assert set(injected) == set(FAULTS)
    assert 0.2 <= sum(injected.values()) / len(script.arrivals) <= 0.4
    assert re.search(r"\d+ accepted .* errors(, \d+ will be retried on resume)?; results in", done.stdout)
    assert_run_whole(run)
    retries = sum(role["retries"] for role in RunStore(run).manifest().counts["models"].values())
    print(f"server faults: {len(script.arrivals)} requests, {sum(injected.values())} faults injected "
          f"({dict(injected)}), {retries} retries recorded in kept trajectories")
    assert retries > 0


def test_a_fault_never_changes_a_decision_only_ends_a_call_whose_retries_are_spent(faulty_run, fault_free):
    run, _, _ = faulty_run
    faulty = decisions(run)
    assert set(faulty) == set(fault_free)  # every task: accepted, rejected or error, once
    changed = {i: faulty[i] for i in faulty if faulty[i] != fault_free[i]}
    for status, reason, _ in changed.values():
        assert status == "error"
        assert re.fullmatch(rf"ChatError: http://127\.0\.0\.1:\d+/v1 \(scripted-vlm\): gave up after {MAX_RETRIES} "
                            r"retries: .+", reason), reason
    assert len(changed) < len(faulty) / 2


def test_retries_are_bounded_and_honour_retry_after(faulty_run):
    _, script, _ = faulty_run
    arrivals = defaultdict(list)
    for key, at, fault in script.arrivals:
        arrivals[key].append((at, fault))
    assert max(len(tries) for tries in arrivals.values()) <= MAX_RETRIES + 1
    gaps = [after[0] - at for tries in arrivals.values() for (at, fault), after in zip(tries, tries[1:])
            if fault == "429"]
    assert gaps and min(gaps) >= RETRY_AFTER  # the retry waited at least what the server asked
    spent = Counter(len(tries) for tries in arrivals.values())
    print(f"retry-after gaps: {len(gaps)} (min {min(gaps):.3f}s); attempts per request: {dict(sorted(spent.items()))}")


def test_a_stalled_server_ends_each_search_at_its_time_budget(sign_inputs, tmp_path):
    def stall_on_targets(body: dict) -> Reply:
        reply = sign_reader_vlm(body)
        if body["response_format"]["json_schema"]["name"] == "Targets":
            reply.delay = 600  # never answers within the client's 30 s timeout: only the budget ends the search
        return reply

    # every search out of time: the run made no trajectory (exit code 1)
    run, _, _ = synthesize_against(stall_on_targets, sign_inputs, tmp_path, exit_code=1, timeout=30.0, max_seconds=1.5)
    assert not list(RunStore(run).trajectories())
    searches = [e for e in RunStore(run).errors() if e.stage == "trajectory"]
    assert len(searches) == 8  # transient: on a loaded machine a later run may finish them, so a resume retries
    assert {(e.transient, e.reason) for e in searches} == {(True, "WallTimeSpent: budget: wall time of 1.5s spent")}


@pytest.mark.parametrize("body", [b'{"object": "list", "data": []}', b"[1, 2]",
                                  b'{"choices": [{"message": {"role": "assistant", "content": 5}}]}'],
                         ids=["not-a-completion", "json-list", "content-not-text"])
def test_a_200_reply_that_is_not_a_chat_completion_is_retried(body):
    with ScriptedServer([Reply(body=body), Reply("fine")]) as server:
        model = chat_model(ChatModelConfig(base_url=server.url, model="m", backoff_seconds=0.01))
        completion = asyncio.run(model.complete([ChatMessage("user", "hello")]))
    assert (completion.text, completion.retries, len(server.requests)) == ("fine", 1, 2)
