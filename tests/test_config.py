"""config.py: the pipeline YAML, its validation messages, `--config` names and the run fingerprint."""

import pytest

from mmcof_gen import resources
from mmcof_gen.config import DEFAULT_CONFIG, load_config
from mmcof_gen.errors import ConfigError
from mmcof_gen.prompts import Prompts
from mmcof_gen.tasks.base import task_prompts


def test_default_pipeline_loads_with_its_prompts():
    config = load_config(DEFAULT_CONFIG)
    assert config.resolutions == [448, 672, 1024, 1920]
    assert set(Prompts(config.prompts_dir).hashes) >= {"think_direct", "think_answer"}
    assert task_prompts(config).render("question_text", position="bottom left") == (
        "What does the small text in the bottom left part of the image say?")


def test_fingerprint_ignores_executor_but_not_resolutions():
    a = load_config(DEFAULT_CONFIG)
    b = a.model_copy(deep=True)
    b.executor.workers = 4
    c = a.model_copy(update={"resolutions": [448]})
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()


def test_unknown_key_and_bad_values_name_the_file(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("resolutions: [448]\nagent: {max_zoom: 3}\n")
    with pytest.raises(ConfigError, match=r"p.yaml: agent.max_zoom: Extra inputs are not permitted"):
        load_config(path)
    path.write_text("resolutions: [50]\nprompts_dir: /nonexistent\n")
    with pytest.raises(ConfigError, match="resolutions"):
        load_config(path)
    with pytest.raises(ConfigError, match="missing.yaml: no such file or shipped pipeline; pass a YAML file or "
                                          "one of: default, finetune, llm-planner-choose, llm-planner-ocr, "
                                          "llm-planner-vlm-tools, "
                                          "openai-api, transformers-local, vllm-qwen2.5-vl, vllm-qwen3-vl"):
        load_config(tmp_path / "missing.yaml")


def test_config_is_a_file_or_a_shipped_name_and_prompts_dir_follows_the_yaml(tmp_path):
    vllm = load_config("vllm-qwen2.5-vl")
    assert (vllm.name, vllm.prompts_dir) == ("vllm-qwen2.5-vl", resources.prompts("agent"))
    assert load_config().prompts_dir == resources.prompts("template")  # no prompts_dir: the agent kind's prompts
    copy = tmp_path / "copy" / "mine.yaml"
    copy.parent.mkdir()
    copy.write_text(DEFAULT_CONFIG.read_text().replace("max_per_image: 4", "max_per_image: 2"))
    assert (load_config(copy).tasks.max_per_image, load_config(copy).prompts_dir) == (2, resources.prompts("template"))
    (tmp_path / "copy" / "my_prompts").mkdir()
    (tmp_path / "copy" / "my_prompts" / "think_answer.txt").write_text("Mine.")
    copy.write_text("prompts_dir: my_prompts\ntasks: {synthesis: {prompts_dir: " + str(tmp_path) + "}}\n")
    config = load_config(copy)  # relative: against the YAML's folder; absolute: as is
    assert (config.prompts_dir, config.tasks.synthesis.prompts_dir) == (tmp_path / "copy" / "my_prompts", tmp_path)
    copy.write_text("prompts_dir: ../prompts/template\n")
    with pytest.raises(ConfigError, match=f"mine.yaml: prompts_dir {tmp_path / 'prompts' / 'template'} is not a folder"):
        load_config(copy)
