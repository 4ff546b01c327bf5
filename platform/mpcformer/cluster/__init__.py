"""Ray plumbing for MPC: party groups (owner, client, dealer actors), a pool of K groups with
retries, and the encrypted-inference batch job built on them.

- :mod:`~mpcformer.cluster.config`: ``PartyGroupConfig``
- :mod:`~mpcformer.cluster.party_group`: ``PartyGroup`` (start / run / shutdown), ``PartyCall``
- :mod:`~mpcformer.cluster.scheduler`: ``GroupPool`` (K groups, rebuild and retry), ``PoolConfig``
- :mod:`~mpcformer.cluster.batches`: batch plan and the resumable output folder
- :mod:`~mpcformer.cluster.infer` / :mod:`~mpcformer.cluster.infer_batch`: ``mpcformer infer``
- :mod:`~mpcformer.cluster.context`: ``get_party_context()`` inside a party function
- :mod:`~mpcformer.cluster.probe`: tiny encrypted computations to check a group

Submodules are imported on demand (this package imports nothing heavy).
"""
