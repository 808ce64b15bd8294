"""RLHF Lab: a tiny, complete RLHF pipeline you can read and run on a laptop.

Modules map to lessons: `world` (the toy world and its simulated human), `tokenizer`, `policy`,
`sft`, `preferences`, `reward`, `ppo`, `dpo`, and `evaluate`.
"""

__version__ = "0.1.0"
