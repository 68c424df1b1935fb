"""The executor contract's shared parts: the sink (exactly once, resume state) and the config the executors
are given (flags merged into the YAML by `load_config`, validated once)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from mmcof_gen.config import DEFAULT_CONFIG, load_config
from mmcof_gen.errors import ConfigError
from mmcof_gen.executors.sink import RecordSink
from mmcof_gen.schema import ErrorRecord, ImageTasks
from mmcof_gen.store import RunStore


def error(number: int) -> ErrorRecord:
    return ErrorRecord(id=f"e{number}", stage="image", image=f"{number}.png", reason="unreadable")


def test_the_sink_writes_each_id_once_from_many_threads_and_resumes_with_what_is_written(tmp_path):
    sink = RecordSink(RunStore.open(tmp_path / "run", "x", {}))
    with ThreadPoolExecutor(8) as threads:
        list(threads.map(lambda n: sink.write(error(n % 50)), range(400)))
    sink.write(ImageTasks(id="a.png", image="a.png", image_sha256="0" * 64, width=8, height=8, tasks=[]))
    sink.store.close()
    assert sorted(e.id for e in RunStore(tmp_path / "run").errors()) == sorted(f"e{n}" for n in range(50))

    resumed = RecordSink(RunStore.open(tmp_path / "run", "x", {}))
    assert (resumed.resumed, resumed.done("e7"), resumed.done("e50")) == (50, True, False)
    assert resumed.done_among(["e1", "e99", "e2"]) == frozenset({"e1", "e2"})
    assert resumed.tasks("a.png").image_sha256 == "0" * 64 and resumed.tasks("b.png") is None
    resumed.written(error(99))  # a Ray actor appended it to its shard: done, not written again
    resumed.write(error(99))
    resumed.store.close()
    assert [e.id for e in RunStore(tmp_path / "run").errors()].count("e99") == 0


def test_load_config_merges_flags_into_the_yaml_and_validates_them_once():
    config = load_config(DEFAULT_CONFIG, {"resolutions": [672, 448], "executor.workers": 3, "executor.kind": "ray",
                                          "filter.balance": True, "executor.address": None})
    assert (config.resolutions, config.executor.workers, config.executor.kind, config.filter.balance,
            config.executor.address) == ([448, 672], 3, "ray", True, None)
    assert config.fingerprint() == load_config(DEFAULT_CONFIG, {"resolutions": [448, 672]}).fingerprint()
    with pytest.raises(ConfigError, match=r"default.yaml: executor.workers: Input should be greater than or equal to 1"):
        load_config(DEFAULT_CONFIG, {"executor.workers": 0})
