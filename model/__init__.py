"""The network's parts: backbones, aggregation heads, attention layers and external weights."""
