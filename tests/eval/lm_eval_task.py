"""Score a benchmark folder with lm-eval (the field's reference harness) through a local custom task.

The task is written independently of colossal_hammer's prompt code: lm-eval renders C-Eval's prompt
from the raw fields with its own Jinja template, puts the dev examples in front with its first_n
sampler, and scores with its multiple_choice output type (acc, acc_norm).
"""

from __future__ import annotations

import json

LETTERS = ["A", "B", "C", "D"]
QUESTION = "{{question}}\nA. {{A}}\nB. {{B}}\nC. {{C}}\nD. {{D}}\n"
# C-Eval's Chinese prompt; Hendrycks' MMLU English one (whose answers follow "Answer:" after a space)
STYLE = {"zh": ("以下是中国关于{}考试的单项选择题，请选出其中的正确答案。\n\n", "答案：", ""),
         "en": ("The following are multiple choice questions (with answers) about {}.\n\n", "Answer:", " ")}


def task_config(name, subject, test_file, dev_file, method, shots, language, cache_dir):
    header, cue, delimiter = STYLE[language]
    config = {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(test_file), "dev": str(dev_file)}, "cache_dir": str(cache_dir)},
        "test_split": "test",
        "output_type": "multiple_choice",
        "description": header.format(subject.replace("_", " ")),
        "doc_to_text": QUESTION + cue,
        "doc_to_target": "{{['A', 'B', 'C', 'D'].index(answer)}}",
        "doc_to_choice": LETTERS if method == "letter" else "{{[A, B, C, D]}}",
        "target_delimiter": delimiter,
        "fewshot_delimiter": "\n\n",
        "metric_list": [{"metric": "acc"}, {"metric": "acc_norm"}],
    }
    if shots:
        config.update(fewshot_split="dev", fewshot_config={"sampler": "first_n"})
    return config


def lm_eval_scores(model_dir, data, runs, work, batch_size=1):
    """For each run (method, shots, language): subject -> (accuracy, per question per choice
    log-likelihoods, prompts) by lm-eval (acc for letter, acc_norm for loglik), in one evaluation."""
    import lm_eval
    import yaml
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    work.mkdir(parents=True, exist_ok=True)
    files = {}
    for subject, splits in data.items():
        for split in ("test", "dev"):
            files[subject, split] = work / f"{subject}_{split}.jsonl"
            files[subject, split].write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in splits[split]),
                                             encoding="utf-8")
    tasks = {}
    for run in runs:
        method, shots, language = run
        for subject in data:
            name = f"choice_check_{method}_{shots}_{language}_{subject}"
            config = task_config(name, subject, files[subject, "test"], files[subject, "dev"], method, shots, language,
                                 work / "cache")
            config["num_fewshot"] = shots
            (work / f"{name}.yaml").write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
            tasks[name] = (run, subject)
    model = HFLM(pretrained=str(model_dir), batch_size=batch_size, device="cpu")
    out = lm_eval.simple_evaluate(model=model, tasks=sorted(tasks), log_samples=True,
                                  task_manager=TaskManager(include_path=str(work)))
    result = {run: {} for run in runs}
    for name, (run, subject) in tasks.items():
        samples = sorted(out["samples"][name], key=lambda s: s["doc_id"])
        scores = [[float(r[0][0]) for r in s["resps"]] for s in samples]
        prompts = [s["arguments"][0][0] for s in samples]
        metric = "acc,none" if run[0] == "letter" else "acc_norm,none"
        result[run][subject] = (out["results"][name][metric], scores, prompts)
    return result
