"""The RL reward of `export --format verl / swift-grpo`: 1.0 when the reply's answer is right by eval's rules,
else 0.0, so supervised data, RL and eval agree on what a right answer is.

The answer is the LAST `<answer>...</answer>` of the reply (`cof_format.extract_answer`, eval's convention), scored
by `scoring.score_by_rules` against the row's ground truth: multiple choice takes the letter, `(B)`, `B.`, `(B) text`
or the option text; open answers match after `answers.normalize_text`. What only eval's optional LLM judge
could decide scores 0.0 here (a reward must be cheap and deterministic). No format bonus: the CoF recipe's reward
adds 0.1 for `<think>...</think> <answer>...</answer>`; add it in a wrapper if you want it.

verl (`custom_reward_function` in the trainer config, or on the command line):

    custom_reward_function.path=$(python -c "import mmcof_gen.rewards as r; print(r.__file__)") \\
    custom_reward_function.name=compute_score

ms-swift GRPO: a plugin file passed with `--external_plugins mmcof_reward.py --reward_funcs mmcof`, whose rows'
columns (`reward_model`, `extra_info`, `data_source`) reach the reward as keyword lists:

    from swift.rewards.orm import ORM, orms   # ms-swift 3.x before the move: from swift.plugin import ORM, orms
    from mmcof_gen.rewards import compute_score

    class MmcofReward(ORM):
        def __call__(self, completions, reward_model, extra_info, data_source, **kwargs):
            return [compute_score(s, c, r["ground_truth"], e)
                    for c, r, e, s in zip(completions, reward_model, extra_info, data_source)]

    orms["mmcof"] = MmcofReward
"""

from __future__ import annotations

from mmcof_gen.cof_format import extract_answer, option_letter
from mmcof_gen.scoring import score_by_rules


def compute_score(data_source: str, solution_str: str, ground_truth: str, extra_info: dict | None = None,
                  **kwargs) -> float:
    """1.0 if the last `<answer>` of `solution_str` is right for `ground_truth`, else 0.0 (verl's signature; extra
    keyword arguments verl may pass, such as a reward-model address, are ignored). For multiple choice,
    `extra_info["options"]` (written by the export) lets the option's text count as well as its letter."""
    options = (extra_info or {}).get("options") or None
    expected = ground_truth
    if options:
        letters = [option_letter(i) for i in range(len(options))]
        expected = options[letters.index(ground_truth)] if ground_truth in letters else ground_truth
    score = score_by_rules(extract_answer(solution_str or ""), options, expected)
    return 1.0 if score is not None and score.correct else 0.0
