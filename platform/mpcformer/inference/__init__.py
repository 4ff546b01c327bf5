"""Encrypted inference: the two-party protocol, the party operations that run it, and the job.

- :mod:`~mpcformer.inference.protocol`: ``run_private_inference`` (both parties, inside an MPC session)
- :mod:`~mpcformer.inference.bundle`: the owner's public bundle (tokenizer and architecture, never weights)
- :mod:`~mpcformer.inference.party_ops`: the registered party operations (prepare, batch, summarize)
- :mod:`~mpcformer.inference.batches`: the batch plan and the resumable output folder
- :mod:`~mpcformer.inference.job`: ``InferConfig`` and ``run_infer``, the driver of ``mpcformer infer``

Submodules are imported on demand (this package imports nothing heavy).
"""
