"""System time of a demo-sized training step with glibc's default malloc against the demo's MALLOC settings.
Prints figures, asserts nothing.

A full-scale demo model (Llama, 4 layers, hidden 192, vocabulary 18,048, batch 4 x 256 tokens, AdamW),
one process, one thread, STEPS steps after one warm-up step, each setting in a fresh process:
user and system seconds (getrusage) and minor page faults. Why it matters: `make demo` spent 14 of its
24.5 minutes in system time; see colossal_hammer/demo/pipeline.py MALLOC.

    python bench/malloc_page_faults.py [--steps 10]
"""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

STEP = """
import json, resource, sys, torch
from transformers import LlamaConfig, LlamaForCausalLM
torch.manual_seed(0)
config = LlamaConfig(hidden_size=192, intermediate_size=528, num_hidden_layers=4, num_attention_heads=4,
                     num_key_value_heads=2, vocab_size=18048, max_position_embeddings=2048)
model = LlamaForCausalLM(config)
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
x = torch.randint(0, config.vocab_size, (4, 256))
def step():
    model(input_ids=x, labels=x).loss.backward()
    opt.step()
    opt.zero_grad()
step()
r0 = resource.getrusage(resource.RUSAGE_SELF)
for _ in range(int(sys.argv[1])):
    step()
r1 = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"user_s": r1.ru_utime - r0.ru_utime, "sys_s": r1.ru_stime - r0.ru_stime,
                  "minor_faults": r1.ru_minflt - r0.ru_minflt}))
"""


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=10)
    a = p.parse_args()
    sys.path.insert(0, str(REPO))
    from colossal_hammer.demo.pipeline import MALLOC

    base = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    base["OMP_NUM_THREADS"] = "1"  # as torchrun gives each rank
    for name, env in (("glibc default", base), (f"demo MALLOC {MALLOC}", {**base, **MALLOC})):
        out = subprocess.run([sys.executable, "-c", STEP, str(a.steps)], env=env, check=True, capture_output=True,
                             text=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        print(f"{name}: {a.steps} steps, user {r['user_s']:.2f} s, system {r['sys_s']:.2f} s, "
              f"{r['minor_faults']:,} minor page faults", flush=True)


if __name__ == "__main__":
    main()
