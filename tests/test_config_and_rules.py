import pytest

from mmcof_gen import resources
from mmcof_gen.agent.verify import normalize_text, verify_answer
from mmcof_gen.config import DEFAULT_CONFIG, ConfigError, load_config
from mmcof_gen.positions import cell_box, cell_named, cell_of, position_name
from mmcof_gen.prompts import Prompts
from mmcof_gen.tasks.synthesis import task_prompts


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
                                          "one of: default, finetune, llm-planner-ocr, llm-planner-vlm-tools, "
                                          "openai-api, transformers-local, vllm-qwen2.5-vl"):
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


def test_grid_cells_and_names():
    assert cell_of((10, 10, 20, 20), 300, 300) == (0, 0)
    assert position_name((2, 0)) == "bottom left"
    assert cell_named("right") == (1, 2)
    assert cell_box((2, 0), 517, 391) == (0, 260, 172, 391)
    assert cell_of((95, 10, 105, 20), 300, 300, margin=0.04) is None  # centre x=100 is on the first grid line
    with pytest.raises(ValueError, match="unknown position"):
        cell_named("somewhere")


def test_verifier_normalises_case_spaces_and_punctuation():
    assert normalize_text("Gate 14-B.") == "gate14b"
    assert verify_answer("GATE 14B", "gate 14-b").correct
    wrong = verify_answer("GATE 41B", "GATE 14B")
    assert not wrong.correct and wrong.reason == "read 'GATE 41B', expected 'GATE 14B'"
    assert verify_answer(None, "X").reason == "no answer"
