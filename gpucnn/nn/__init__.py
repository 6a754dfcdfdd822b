"""The network: layers, the loss, Sequential, the named architectures (zoo), summaries and saved files."""
