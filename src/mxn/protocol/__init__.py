"""The OpenAI and MaaS wire protocol: request models and their validation."""
