"""What the way an answer ended means for an agent's run.

Most answers end in text or tool calls the runner uses. A few end in a way that leaves
nothing usable, and each stops the run with an explicit error rather than be taken as
the final output:

=================================================  =========================================
how the answer ended                               error
=================================================  =========================================
cut (``length``: max_tokens, or Anthropic's         ``BudgetExceeded``: the calls' arguments
``model_context_window_exceeded``) inside a        are incomplete, so nothing is run
tool call
Anthropic ``pause_turn`` (its server tools         ``BudgetExceeded``: shoal keeps no
paused a long turn)                                server-tool blocks to send back, so it
                                                   cannot continue the turn
a refusal (OpenAI ``message.refusal``, Anthropic   ``ModelRefused`` with the model's words
``refusal``) without tool calls
``content_filter`` without tool calls (OpenAI's    ``ModelRefused``: the provider's filter
filter, Zhipu ``sensitive``)                       stopped an answer that may be partial
=================================================  =========================================
"""

from __future__ import annotations

from shoal.errors import BudgetExceeded, ModelRefused, RunError
from shoal.types import ChatResponse

__all__ = ["unusable"]


def unusable(agent: str, response: ChatResponse) -> RunError | None:
    """The error that ends the run of ``agent`` on ``response``, or None when the answer
    is one the runner can use (text to parse, tool calls to run)."""
    calls = response.tool_calls
    raw = response.raw_finish_reason
    if calls and response.finish_reason == "length":
        names = ", ".join(repr(c.name) for c in calls)
        if raw == "model_context_window_exceeded":
            return BudgetExceeded(
                f"agent {agent!r}: the model's answer filled its context window inside its "
                f"call of {names}, whose arguments are incomplete, so nothing was run; trim "
                "the conversation (the agent's context policy) or use a model with a larger "
                "window")
        return BudgetExceeded(
            f"agent {agent!r}: the model's answer was cut at max_tokens "
            f"({response.usage.output_tokens} output tokens) inside its call of {names}, "
            "whose arguments are incomplete, so nothing was run; raise the agent's max_tokens")
    if raw == "pause_turn" and not calls:
        return BudgetExceeded(
            f"agent {agent!r}: Anthropic paused the turn (stop_reason 'pause_turn': its "
            "server tools reached their iteration limit). Continuing needs the server-tool "
            "blocks sent back, which shoal does not keep, so the partial answer is not used "
            "as output; split the task into smaller steps")
    if calls:
        return None
    if response.refusal:
        return ModelRefused(f"agent {agent!r}: the model declined to answer: "
                            f"{response.refusal}", refusal=response.refusal)
    if response.finish_reason == "content_filter":
        label = f" (finish_reason {raw!r})" if raw else ""
        words = f"the provider's content filter stopped the answer{label}"
        return ModelRefused(f"agent {agent!r}: {words}; the answer so far is not used",
                            refusal=words)
    return None
