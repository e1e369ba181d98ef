"""shoal's HTTP gateway: OpenAI- and Anthropic-protocol endpoints over the Router.

Nothing here is imported by ``import shoal``; ``shoal gateway`` loads it.
"""
