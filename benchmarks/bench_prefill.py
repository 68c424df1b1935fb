"""Prefill per accepted sample: what the shipped VLM pipeline makes a prefix-caching server compute.

Run from the checkout:
  PYTHONPATH=. .venv/bin/python benchmarks/bench_prefill.py [--baseline REF] [--url URL --model NAME]
      [--images 2] [--questions 3] [--resolutions 448,672]

Runs `synthesize` (as its own process) with pipelines/vllm-qwen2.5-vl.yaml, its models pointed at the server, on
`--images` pictures with `--questions` questions each about the same small sign, and reads the server's
/metrics before and after. Printed per setting: requests, prompt and generation tokens, accepted samples, prompt
tokens per accepted sample and those of them the server computed (not served from its prefix cache: the prefill
a GPU pays for), the prefix-cache hit share of prompt tokens (vllm:prefix_cache_hits /
vllm:prefix_cache_queries) and the image-cache hit share (vllm:mm_cache_hits / vllm:mm_cache_queries, where the
server has them).

Without --url: the scripted server (tests/support/scripted_server.py) plays a VLM that zooms on the sign and reads
it from the crop, and counts tokens and cache hits exactly as its `PrefixCache` says (tests assert the counts).
With --url: a served model, such as the vLLM server of tests/vllm/stage.sh (a tiny random Qwen2.5-VL: its
answers are noise, but the token accounting is the server's own). A random model's searches differ in length
with every change of a prompt's tokens, which swamps a change of layout; `--forced` makes them the scripted
ones: each request goes to the served model with the scripted VLM's reply as the only choice its grammar allows
(vLLM's `structured_outputs` choice), so the server generates exactly that reply and counts the tokens itself.

`--baseline REF` first runs the code of a git revision (extracted with `git archive`, as bench_scale.py does)
against the same server. Every run draws its pictures' pixels (same sizes) from the server's count of prompt
tokens so far, so that no run is served from what an earlier one left in the cache (a server keeps it), and a
fresh server is given the same pictures every time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.bench_scale import extract  # noqa: E402
from mmcof_gen import resources  # noqa: E402
from tests.support.scripted_server import PrefixCache, Reply, ScriptedServer  # noqa: E402
from tests.support.sign_model import picture, scripted_model  # noqa: E402

SIGN = [600, 400, 680, 460]  # the sign in the 896x672 picture
QUESTIONS = ["What colour is the small sign?", "Which colour does the small sign have?",
             "What is the colour of the small sign?", "The small sign: what colour is it?",
             "Name the colour of the small sign.", "In what colour is the small sign painted?"]
COUNTERS = ("request_success", "prompt_tokens", "generation_tokens", "prefix_cache_queries", "prefix_cache_hits",
            "mm_cache_queries", "mm_cache_hits")


@dataclass
class Figures:
    """The server's counters over one run (differences of /metrics), and the run's accepted samples."""

    counts: dict[str, float]
    accepted: int

    @staticmethod
    def share(hits: float, queries: float) -> float | None:
        return hits / queries if queries else None

    @property
    def prefix_share(self) -> float | None:
        return self.share(self.counts["prefix_cache_hits"], self.counts["prefix_cache_queries"])

    @property
    def image_share(self) -> float | None:
        return self.share(self.counts["mm_cache_hits"], self.counts["mm_cache_queries"])

    @property
    def per_sample(self) -> float | None:
        return self.counts["prompt_tokens"] / self.accepted if self.accepted else None

    @property
    def computed_per_sample(self) -> float | None:
        computed = self.counts["prompt_tokens"] - self.counts["prefix_cache_hits"]
        return computed / self.accepted if self.accepted else None


def counters(base_url: str) -> dict[str, float]:
    """vLLM's counters named in COUNTERS from the server's /metrics, summed over their label sets (0 if absent)."""
    with urllib.request.urlopen(base_url.removesuffix("/v1") + "/metrics", timeout=30) as response:
        text = response.read().decode()
    found = dict.fromkeys(COUNTERS, 0.0)
    for line in text.splitlines():
        name, _, rest = line.partition("{")
        name = name.split()[0] if name and not line.startswith("#") else ""
        if name.startswith("vllm:") and name.endswith("_total") and name[5:-6] in found:
            found[name[5:-6]] += float(line.rsplit(maxsplit=1)[-1])
    return found


def write_inputs(folder: Path, seed: int, images: int, questions: int) -> tuple[Path, Path]:
    """`images` 896x672 pictures of the sign (pixels from `seed`) and `questions` questions on each."""
    (folder / "images").mkdir(parents=True)
    rows = []
    for index in range(images):
        picture(seed + index).resize((896, 672), Image.NEAREST).save(folder / "images" / f"sign{index}.png")
        rows += [{"image": f"sign{index}.png", "question": question, "answer": "red", "bbox": SIGN}
                 for question in QUESTIONS[:questions]]
    (folder / "questions.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return folder / "images", folder / "questions.jsonl"


def write_config(path: Path, base_url: str, model: str) -> Path:
    """The shipped VLM pipeline with its models pointed at the server (the YAML's roles share one mapping)."""
    data = yaml.safe_load((resources.PIPELINES / "vllm-qwen2.5-vl.yaml").read_text(encoding="utf-8"))
    for role in ("planner", "reader", "locator"):
        data["models"][role].update(base_url=base_url, model=model)
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def forced(url: str, model: str):
    """A script that has the served model at `url` write the scripted VLM's reply to each request, under a grammar
    that allows only that reply. Requests are forwarded one at a time (the searches' order is the scripted
    server's), which the token accounting does not depend on."""
    script = scripted_model(fault=False)

    def answer(body: dict) -> Reply:
        body = {**body, "model": model, "structured_outputs": {"choice": [script(body).content]}}
        del body["response_format"]
        request = urllib.request.Request(f"{url}/chat/completions", json.dumps(body).encode(),
                                         {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=600) as response:
            return Reply(body=response.read())
    return answer


def measure(code: Path, folder: Path, base_url: str, model: str, images: int, questions: int,
            resolutions: str, metrics_url: str | None = None) -> Figures:
    """One `synthesize` run of the code in `code` against the server, with the counters of the server at
    `metrics_url` (default: the same) around it."""
    metrics_url = metrics_url or base_url
    before = counters(metrics_url)
    image_dir, questions_file = write_inputs(folder, int(before["prompt_tokens"]), images, questions)
    config = write_config(folder / "pipeline.yaml", base_url, model)
    done = subprocess.run([sys.executable, "-m", "mmcof_gen.cli", "synthesize", "--images", str(image_dir),
                           "--questions", str(questions_file), "--config", str(config), "--resolutions", resolutions,
                           "--out", str(folder / "run")], cwd=code, env={**os.environ, "PYTHONPATH": str(code)},
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"synthesize with the code of {code} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    after = counters(metrics_url)
    trajectories = (folder / "run" / "trajectories.jsonl").read_text(encoding="utf-8").splitlines()
    accepted = sum(json.loads(line)["status"] == "accepted" for line in trajectories)
    return Figures({name: after[name] - before[name] for name in COUNTERS}, accepted)


def report(label: str, figures: Figures) -> str:
    def share(value: float | None) -> str:
        return "-" if value is None else f"{value:.1%}"

    c = figures.counts
    per_sample = "-" if figures.per_sample is None else f"{figures.per_sample:,.0f}"
    computed = "-" if figures.computed_per_sample is None else f"{figures.computed_per_sample:,.0f}"
    images = f"{share(figures.image_share)} of {c['mm_cache_queries']:.0f}"
    return (f"{label:<22} {c['request_success']:>8.0f} {c['prompt_tokens']:>9,.0f} {c['generation_tokens']:>9,.0f} "
            f"{figures.accepted:>8} {per_sample:>12} {computed:>13} {share(figures.prefix_share):>10} "
            f"{images:>16}")


def run(base_url: str, model: str, baseline: str | None, images: int, questions: int, resolutions: str,
        out=print, metrics_url: str | None = None) -> dict[str, Figures]:
    """Every setting against the server at `base_url`; the figures by setting, each printed as it is done."""
    out(f"{'setting':<22} {'requests':>8} {'prompt':>9} {'generated':>9} {'accepted':>8} {'prompt/acc.':>12} "
        f"{'computed/acc.':>13} {'prefix hit':>10} {'image-cache hit':>16}")
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench_prefill_") as tmp:
        tmp = Path(tmp)
        settings = [(f"baseline {baseline}", extract(baseline, tmp))] if baseline else []
        settings.append(("current", ROOT))
        for number, (label, code) in enumerate(settings):
            figures = measure(code, tmp / f"setting{number}", base_url, model, images, questions, resolutions,
                              metrics_url)
            out(report(label, figures))
            results[label] = figures
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a served model's OpenAI base URL (ending in /v1); none: the scripted server")
    parser.add_argument("--model", default="scripted-model", help="its served model name")
    parser.add_argument("--baseline", metavar="REF", help="also run the code of this git revision, first")
    parser.add_argument("--images", type=int, default=2, help="pictures of the sign")
    parser.add_argument("--questions", type=int, default=3, choices=range(1, len(QUESTIONS) + 1),
                        help="questions per picture")
    parser.add_argument("--resolutions", default="448,672", help="the run's pixel budgets R")
    parser.add_argument("--forced", action="store_true",
                        help="with --url: the served model writes the scripted VLM's replies (same searches)")
    args = parser.parse_args(argv)
    forcing = ", replies forced to the scripted ones" if args.forced else ""
    print(f"{args.images} pictures x {args.questions} questions at R {args.resolutions}, pipeline vllm-qwen2.5-vl, "
          f"server {args.url or 'scripted (exact accounting)'}{forcing}\n")
    if args.url and args.forced:
        with ScriptedServer(forced(args.url, args.model), model=args.model) as proxy:
            run(proxy.url, args.model, args.baseline, args.images, args.questions, args.resolutions,
                metrics_url=args.url)
        return
    if args.url:
        run(args.url, args.model, args.baseline, args.images, args.questions, args.resolutions)
        return
    with ScriptedServer(scripted_model(fault=False), model=args.model, cache=PrefixCache()) as server:
        run(server.url, args.model, args.baseline, args.images, args.questions, args.resolutions)


if __name__ == "__main__":
    main()
