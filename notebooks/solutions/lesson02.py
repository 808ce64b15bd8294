"""Lesson 02 (supervised fine-tuning): model solutions to the exercises.

Each function can be pasted into the exercise's stub cell as it is.
"""

import torch


def my_masked_sft_loss(logits: torch.Tensor, input_ids: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy averaged over the target tokens of the whole batch (a scalar).

        loss = -sum_{b,t} m_bt log p(x_bt | x_b,<t) / sum_{b,t} m_bt      (t = 1 .. T-1)

    logits: (B, T, V), the model's output; the prediction of token t is read at position t - 1.
    input_ids: (B, T) token ids. loss_mask: (B, T), m_t = 1 where token t is a target (an answer
    token or <|end|>) and 0 on the prompt and the pads.
    Tip: torch.log_softmax(logits, dim=-1), then .gather(-1, ...) picks each target's log-prob.
    """
    # Position t - 1 predicts token t: drop the last prediction and the first token.
    logprobs = torch.log_softmax(logits[:, :-1].float(), dim=-1)  # log_softmax: no log(0) for large logits
    targets = input_ids[:, 1:]
    target_logprobs = logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (B, T-1)
    mask = loss_mask[:, 1:].float()  # the mask of the targets, aligned with them
    return -(target_logprobs * mask).sum() / mask.sum()


def my_sft_loss_mask(attention_mask: torch.Tensor, prompt_lengths: torch.Tensor) -> torch.Tensor:
    """The SFT loss mask: 1 on the answer tokens (and <|end|>), 0 on the prompt and the pads.

        m_t = 1  if token t is real and at least prompt_length real tokens come before it, else 0

    attention_mask: (B, T), 1 on real tokens, 0 on pads, which may be on the left or the right.
    prompt_lengths: (B,), the number of prompt tokens of each row. Returns (B, T).
    Tip: attention_mask.cumsum(dim=1) - 1 is each token's index among the real tokens of its row.
    """
    real = attention_mask.bool()
    index_among_real = attention_mask.long().cumsum(dim=1) - 1  # pads take their neighbour's index ...
    after_prompt = index_among_real >= prompt_lengths.unsqueeze(1)
    return (after_prompt & real).float()  # ... and are dropped here
