"""The demo's sparse-upcycling stage: stage 2's model continued twice from its last step, on the same data
(stage 2's mix, English at half weight), steps, batch, learning rate and seed:

- dense: the Llama as it is, on the demo's usual plugin (zero2), the baseline;
- MoE: `python -m colossal_hammer.model.upcycle` turns it into a Mixtral whose 4 experts per layer all
  start as the dense MLP (top-2 routing, routers small and random), trained with expert parallelism
  (`--plugin moe --ep 2 --zero_stage 1`: each of the 2 processes holds 2 experts of every layer).

Both are exported and scored like every stage (pipeline.py's evaluate: bits per byte on held-out Chinese
and English); the MoE run's last step record gives the router's load-balancing loss and the spread of
tokens over experts. pipeline.py calls these as stages; everything here is a public command.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

NUM_EXPERTS, TOP_K = 4, 2
# A fraction of stage 2's steps (80 at test scale, 600 at full): an MoE step costs about twice a dense one
# here (twice the MLP work at top-2, and all_to_all between the processes), and the full demo has ~15 minutes.
STEPS = {"test": 20, "full": 50}
# Below stage 2's 1e-3: both runs start a fresh optimizer on a trained model, and at 1e-3 (warmup 2 steps) both
# ended above stage 2 on held-out text in a full run (Chinese 2.394/2.396, English 1.980/1.981 against 2.361,
# 1.919); at 3e-4 neither lost Chinese and both gained English.
LR = 3e-4
RUNS = ("continue_dense", "continue_moe")  # save_dir, log and export names; keys of the results


class Upcycling:
    def __init__(self, demo, scale: str):
        self.demo = demo
        self.steps = STEPS[scale]
        self.figures: dict = {}

    @property
    def out(self) -> Path:
        return self.demo.out

    def _continue(self, name: str, source: list, plugin: tuple = None) -> None:
        d = self.demo
        # one held-out evaluation, at the end: the exports' bits per byte are the figures compared
        d.train(name, source, self.out / "data" / "mix", self.steps, LR, "--category_weights", "english=0.5",
                plugin=plugin, eval_interval=self.steps)
        d.run(sys.executable, "-m", "colossal_hammer.model.export", "--checkpoint", d.last_step(name),
              "--output_dir", self.out / "models" / name)

    def dense(self) -> None:
        self._continue("continue_dense", ["--load_weights_only", self.demo.last_step("stage2")])

    def moe(self) -> None:
        d, upcycled = self.demo, self.out / "models" / "stage2_upcycled"
        line = d.run(sys.executable, "-m", "colossal_hammer.model.upcycle", "--model", d.last_step("stage2"),
                     "--output_dir", upcycled, "--num_experts", NUM_EXPERTS, "--top_k", TOP_K)
        sizes = json.loads([row for row in line.splitlines() if row.startswith("{")][-1])  # its JSON line
        self._continue("continue_moe", ["--pretrained", upcycled], ("--plugin", "moe", "--ep", 2, "--zero_stage", 1))
        steps = {name: [r for r in d.records(name) if r.get("kind") != "eval"] for name in RUNS}
        last = steps["continue_moe"][-1]
        # parameters as each run counted them (run_info.json, the vocabulary padded alike); the experts a token
        # skips are the upcycle's params - active_params
        params = {name: json.loads((self.out / "logs" / name / "run_info.json").read_text())["num_params"]
                  for name in RUNS}
        self.figures = {
            "num_experts": NUM_EXPERTS, "top_k": TOP_K, "steps": last["step"], "params": params,
            "moe_active_params": params["continue_moe"] - (sizes["params"] - sizes["active_params"]),
            # the same tokens for both, counted from each run's own step records
            "tokens": {name: sum(r["tokens"] for r in records) for name, records in steps.items()},
            "router_aux_loss": last["router_aux_loss"], "expert_load_cv": last["expert_load_cv"],
            "first_expert_load_cv": steps["continue_moe"][0]["expert_load_cv"],
            "expert_load": last["expert_load"],
        }

    def markdown(self, bits_per_byte: dict) -> str:
        """report.md's section: dense against MoE continuation, and how the MoE's router spread the tokens."""
        if not self.figures:
            return ""
        f, dense, moe = self.figures, bits_per_byte["continue_dense"], bits_per_byte["continue_moe"]
        loads = "\n".join(f"| {i} | " + " | ".join(f"{v:.3f}" for v in row) + " |"
                          for i, row in enumerate(f["expert_load"]))
        return f"""## Sparse upcycling: stage 2 continued as a {f['num_experts']}-expert MoE beside the dense model

Both start from stage 2's last step and train {f['steps']} more steps on stage 2's data (same batch, learning
rate {LR:g} and seed): the dense Llama with `--plugin zero2`, and its upcycle (every expert a copy of the dense
MLP, top-{f['top_k']} routing, `python -m colossal_hammer.model.upcycle`) with `--plugin moe --ep 2 --zero_stage 1`.

| model | parameters (active per token) | tokens trained | Chinese | English |
|---|---|---|---|---|
| stage 2 (start of both) | | | {bits_per_byte['stage2']['zh']:.4f} | {bits_per_byte['stage2']['en']:.4f} |
| dense, continued | {f['params']['continue_dense']:,} | {f['tokens']['continue_dense']:,} | {dense['zh']:.4f} | {dense['en']:.4f} |
| MoE {f['num_experts']}×top-{f['top_k']}, continued | {f['params']['continue_moe']:,} ({f['moe_active_params']:,}) | {f['tokens']['continue_moe']:,} | {moe['zh']:.4f} | {moe['en']:.4f} |

Bits per byte on held-out text, lower is better. At the MoE's last step: router load-balancing loss
{f['router_aux_loss']:.4f} ({f['top_k']}.0 with tokens and router probabilities spread evenly over the
experts), coefficient of variation of tokens per expert {f['expert_load_cv']:.4f} (mean over layers; first
step {f['first_expert_load_cv']:.4f}). Share of the top-{f['top_k']} slots per expert at the last step:

| layer | {" | ".join(f"expert {e}" for e in range(f['num_experts']))} |
|---|{"---|" * f['num_experts']}
{loads}
"""
