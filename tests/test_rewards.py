"""`mmcof_gen.rewards.compute_score`: the RL reward scores the way eval scores, on the rows the RL export writes."""

import json

import pytest

from mmcof_gen import cof_format
from mmcof_gen.export import export, rl
from mmcof_gen.rewards import compute_score
from mmcof_gen.scoring import score_by_rules
from tests.support.runs import make_trajectory, write_noise_image, write_run
from tests.test_eval import test_multiple_choice_scored_by_letter_then_option_text as eval_mc_cases

OPTIONS = ["red", "blue"]  # the eval tests' fixture: the expected option is "blue", letter B
MC_CASES = eval_mc_cases.pytestmark[0].args[1]  # (predicted, correct, method), eval's own table


@pytest.fixture
def run(tmp_path):
    images = tmp_path / "images"
    write_noise_image(images / "a.png", (600, 400), seed=1)
    write_noise_image(images / "b.png", (500, 500), seed=2)
    colour = make_trajectory(images, "b.png", 448, question="What colour is the cup?", answer="blue",
                             boxes=[(100, 100, 200, 200)])
    colour = colour.model_copy(update={"task": colour.task.model_copy(update={"options": ["green", "blue", "red"]})})
    trajectories = [make_trajectory(images, "a.png", 448, boxes=[(10, 10, 200, 150)]),
                    make_trajectory(images, "a.png", 672),
                    make_trajectory(images, "a.png", 448, question="Which word is on the door?", answer="Push here"),
                    colour,
                    make_trajectory(images, "b.png", 448, question="Rejected?", status="rejected", correct=False)]
    return write_run(tmp_path / "run", images, trajectories), trajectories


def test_every_accepted_chains_final_reply_scores_one_and_a_wrong_answer_zero(tmp_path, run):
    run_dir, trajectories = run
    export(run_dir, "swift-grpo", tmp_path / "out", rl_options=rl.RLOptions(test_fraction=0.0))
    rows = {json.loads(line)["extra_info"]["task_id"]: json.loads(line)
            for line in (tmp_path / "out" / "train.jsonl").read_text().splitlines()}
    accepted = [t for t in trajectories if t.status == "accepted"]
    assert len(accepted) == 4
    for trajectory in accepted:
        row = rows[trajectory.task.id]
        final = cof_format.trajectory_messages(trajectory)[-1]["content"]  # what the SFT data teaches
        truth, info = row["reward_model"]["ground_truth"], row["extra_info"]
        assert compute_score(row["data_source"], final, truth, info) == 1.0
        wrong = cof_format.answer_turn("a guess", "A" if trajectory.task.options else "nothing")
        assert compute_score(row["data_source"], wrong, truth, info) == 0.0
    assert rows[accepted[3].task.id]["reward_model"]["ground_truth"] == "B"


@pytest.mark.parametrize("predicted, correct, method", MC_CASES)
def test_multiple_choice_agrees_with_eval_on_its_fixture(predicted, correct, method):
    reply = "<think> looking </think>\n" + (f"<answer> {predicted} </answer>" if predicted is not None else "")
    assert compute_score("mmcof", reply, "B", {"options": OPTIONS}) == float(correct)
    assert score_by_rules(predicted, OPTIONS, "blue").correct == correct


# eval's test_unmatched_answers_are_left_to_the_judge, as (predicted, options, expected option text or answer)
UNMATCHED = [("it is a bluish one", OPTIONS, "blue"), ("E", OPTIONS, "blue"), ("Stop!", None, "STOP"),
             ("go", None, "STOP")]


@pytest.mark.parametrize("predicted, options, expected", UNMATCHED)
def test_open_and_unmatched_answers_agree_with_eval_rules_and_a_judges_case_is_zero(predicted, options, expected):
    truth = cof_format.stated_answer(expected, options)
    score = score_by_rules(predicted, options, expected)
    reward = compute_score("mmcof", f"<answer> {predicted} </answer>", truth, {"options": options})
    assert reward == (1.0 if score is not None and score.correct else 0.0)
    assert reward == (1.0 if predicted == "Stop!" else 0.0)


def test_the_last_answer_counts_and_no_answer_is_zero():
    assert compute_score("mmcof", "<answer> red </answer> no, <answer> blue </answer>", "B", {"options": OPTIONS}) == 1.0
    assert compute_score("mmcof", "<answer> blue </answer> no, <answer> red </answer>", "B", {"options": OPTIONS}) == 0.0
    assert compute_score("mmcof", "blue", "B", {"options": OPTIONS}) == 0.0  # no <answer> tag
    assert compute_score("mmcof", "", "EXIT") == 0.0
    assert compute_score("mmcof", None, "EXIT") == 0.0


def test_verl_extra_keywords_are_accepted():
    assert compute_score(data_source="mmcof", solution_str="<answer>EXIT</answer>", ground_truth="EXIT",
                         extra_info={"num_turns": 3, "rollout_reward_scores": {}},
                         reward_router_address=None, reward_model_tokenizer=None) == 1.0
