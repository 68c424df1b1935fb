"""benchmarks/bench_prefill.py against the scripted server, whose prefix-cache accounting is exact: what the shipped
VLM pipeline makes a prefix-caching server compute per accepted sample, several questions per picture."""

from __future__ import annotations

from benchmarks import bench_prefill
from tests.support.scripted_server import PrefixCache, ScriptedServer
from tests.support.sign_model import scripted_model


def test_bench_prefill_counts_prompt_tokens_and_cache_hits_of_the_shipped_vlm_pipeline():
    printed = []
    with ScriptedServer(scripted_model(fault=False), cache=PrefixCache()) as server:
        results = bench_prefill.run(server.url, "scripted-model", None, images=1, questions=2, resolutions="448,672",
                                    out=printed.append)
    figures = results["current"]
    # 2 questions x 2 resolutions, each search 5 calls: reader (frame), targets, planner zoom, planner read,
    # reader (crop); all four accepted
    assert figures.accepted == 4
    assert figures.counts == {"request_success": 20, "prompt_tokens": 10134, "generation_tokens": 100,
                              "prefix_cache_queries": 10134, "prefix_cache_hits": 8350, "mm_cache_queries": 24,
                              "mm_cache_hits": 20}
    # every request about a frame shares its first tokens: what is computed is the frames once, each role's
    # instructions once per frame, each search's own question and turns (the planner's conversation begins
    # with naming the targets, and each of its replies, sent back as written, is served from the cache the
    # server made while writing it), and the crops once per frame
    assert printed[-1].split() == ["current", "20", "10,134", "100", "4", "2,534", "446", "82.4%", "83.3%", "of", "24"]


def test_bench_prefill_reads_vllm_counters_summed_over_their_labels(monkeypatch):
    text = ('# HELP vllm:prompt_tokens_total Number of prefill tokens processed.\n'
            '# TYPE vllm:prompt_tokens_total counter\n'
            'vllm:prompt_tokens_total{engine="0",model_name="m"} 100.0\n'
            'vllm:prompt_tokens_total{engine="1",model_name="m"} 20.0\n'
            'vllm:prompt_tokens_created{engine="0",model_name="m"} 1.7e+09\n'
            'vllm:prefix_cache_hits_total{engine="0",model_name="m"} 90.0\n')

    class Response:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return None

        def read(self):
            return text.encode()

    monkeypatch.setattr(bench_prefill.urllib.request, "urlopen", lambda url, timeout: Response())
    found = bench_prefill.counters("http://server/v1")
    assert found["prompt_tokens"] == 120 and found["prefix_cache_hits"] == 90 and found["mm_cache_hits"] == 0
